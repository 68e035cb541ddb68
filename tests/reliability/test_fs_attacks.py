"""Filesystem attacks: nothing outside the root is read, written, moved or deleted.

A decoy tree outside the root is checksummed before and after; links to it are planted in
every folder the daemon reads or writes, a symlink is swapped in between check and open, a
folder being processed is replaced by a symlink to the decoy, and names play with dots.

Hard links are the one deliberate exception, decided here: a hard link in the inbox *is* a
regular file the artist put there (Linux only lets them link files they own or may write, see
``fs.protected_hardlinks``), so its content is processed like any other drop. What must hold
is that the file's other name, outside the root, stays where it is with its content intact:
the daemon only ever renames or unlinks the inbox's name.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

from conftest import textured_image
from daemon_harness import Daemon, files_under, outputs
from PIL import Image
from reliability_kit import (
    Ledger,
    assert_each_exactly_once,
    ledger_fixture,  # noqa: F401  (the ledger fixture)
    quarantine_rel,
    sha,
    sidecar_reason,
    tree_snapshot,
    wait_until,
)

from daemon.spool import Spool
from daemon.spool.names import temp_name


def jpeg(path: Path, seed: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    textured_image(40, 32, seed=seed).save(path, "JPEG", quality=85)
    return path.read_bytes()


def make_decoy(folder: Path) -> set[str]:
    """Outside files an attacker would love the daemon to read or clobber; their hashes."""
    hashes = {sha(jpeg(folder / "secret.jpg", 900))}
    for i in range(8):  # the names the album below uses: bait for a swapped-in folder
        hashes.add(sha(jpeg(folder / f"img{i:02d}.jpg", 910 + i)))
    (folder / "notes.txt").write_text("do not touch\n")
    hashes.add(sha((folder / "notes.txt").read_bytes()))
    return hashes


def input_hashes(root: Path) -> set[str]:
    found = set()
    for output in files_under(root / "outbox"):
        if output.is_symlink():
            continue  # planted by the test; never opened through
        with Image.open(output) as image:
            found.add(image.text["artd:input_sha256"])
    return found


def test_links_swaps_and_dots_never_reach_outside_the_root(
    pixel_checkpoint: Path, tmp_path: Path, ledger: Ledger
) -> None:
    decoy = tmp_path / "decoy"
    decoy_hashes = make_decoy(decoy)
    before = tree_snapshot(decoy)
    root = tmp_path / "root"
    inbox, outbox = root / "inbox", root / "outbox"
    daemon = Daemon(root, pixel_checkpoint, settle_seconds=0.3, max_batch=2)
    daemon.start()
    names: list[str] = []

    # Links planted where the daemon reads and writes.
    (inbox / "link.jpg").symlink_to(decoy / "secret.jpg")
    (inbox / "dirlink").symlink_to(decoy, target_is_directory=True)
    (outbox / "trap").symlink_to(decoy, target_is_directory=True)
    (root / "archive" / "arch").symlink_to(decoy, target_is_directory=True)
    (root / "quarantine" / "qtrap").symlink_to(decoy, target_is_directory=True)
    (outbox / "taken.jpg.png").symlink_to(decoy / "notes.txt")
    jpeg(inbox / "trap" / "t.jpg", 1)
    jpeg(inbox / "arch" / "a.jpg", 2)
    (inbox / "qtrap").mkdir()
    (inbox / "qtrap" / "bad.jpg").write_text("not an image")
    taken = jpeg(inbox / "taken.jpg", 3)
    names += ["trap/t.jpg", "arch/a.jpg", "qtrap/bad.jpg"]

    # A hard link to a file outside the root (see the module docstring).
    outside = tmp_path / "linked" / "original.jpg"
    original = jpeg(outside, 4)
    os.link(outside, inbox / "hard.jpg")
    names.append("hard.jpg")

    # Dots: hidden names are never taken; dots inside names are just names.
    for rel in ("a..b.jpg", "dots../in..folder/c.jpg"):
        jpeg(inbox / rel, 5)
        names.append(rel)
    hidden = [inbox / "..jpg", inbox / "...jpg", inbox / "...x.jpg"]
    for path in hidden:
        path.write_bytes(b"hidden, never taken")

    # A folder being processed is replaced by a symlink to the decoy (same file names).
    album = inbox / "album"
    for i in range(8):
        jpeg(album / f"img{i:02d}.jpg", 20 + i)
    wait_until(lambda: any(p.parent.name == "album" for p in files_under(outbox)), 60,
               "the album being processed", daemon)  # fmt: skip
    os.rename(album, tmp_path / "album-moved")  # what is still in it left the root with it
    album.symlink_to(decoy, target_is_directory=True)

    # A name that flips between a file and a symlink to the secret, at about the settle time.
    stop = threading.Event()
    swapped: list[str] = []

    def swapper() -> None:
        n = 0
        while not stop.is_set():
            target = inbox / f"swap{n}.jpg"
            jpeg(target, 100 + n)
            time.sleep(0.25 + 0.05 * (n % 3))
            link = inbox / f".swap{n}.tmp"
            link.symlink_to(decoy / "secret.jpg")
            os.replace(link, target)
            swapped.append(target.name)
            n += 1

    thread = threading.Thread(target=swapper)
    thread.start()
    time.sleep(4)
    stop.set()
    thread.join()

    expected_done = len(names) + 1  # every named drop settles, and taken.jpg
    wait_until(lambda: len(outputs(root)) + len(files_under(root / "quarantine")) >= expected_done,
               60, "the named drops settled", daemon)  # fmt: skip
    time.sleep(2)  # the swaps and the symlinked album had every chance to be misread
    assert daemon.stop() == 0

    # Nothing outside was read, written, moved or deleted.
    assert tree_snapshot(decoy) == before
    assert not input_hashes(root) & decoy_hashes, "an output was made from the decoy"
    for path in files_under(root):
        if not path.is_symlink():
            assert sha(path.read_bytes()) not in decoy_hashes, path
    assert outside.read_bytes() == original, "the hard link's other name was touched"
    ledger.add(faults=9 + len(swapped), escapes=0)

    # And every drop ended in exactly one place, with a reason where it was refused.
    for link in ("link.jpg", "dirlink", "album"):
        assert (inbox / link).is_symlink()  # left alone, never followed
        (inbox / link).unlink()
    for path in hidden:
        assert path.read_bytes() == b"hidden, never taken"
        path.unlink()
    # Each swapped name was either taken as the real file before the swap, or never taken.
    swap_names = [n for n in swapped if (outbox / f"{n}.png").exists()]
    for name in swapped:
        assert (inbox / name).is_symlink()  # the link itself is left alone, never followed
        (inbox / name).unlink()
    moved = sorted(p.name for p in (tmp_path / "album-moved").iterdir())
    album_done = [f"album/{i}" for i in (f"img{j:02d}.jpg" for j in range(8)) if i not in moved]
    all_names = names + swap_names + album_done
    for link_name in ("trap", "arch", "qtrap"):
        for folder in (outbox, root / "archive", root / "quarantine"):
            if (folder / link_name).is_symlink():
                (folder / link_name).unlink()
    assert os.readlink(outbox / "taken.jpg.png") == str(decoy / "notes.txt")
    (outbox / "taken.jpg.png").unlink()  # kept, not replaced: taken.jpg got the next name
    with Image.open(outbox / "taken.jpg (2).png") as image:
        assert image.text["artd:input_sha256"] == sha(taken)
    (outbox / "taken.jpg (2).png").unlink()
    assert (root / "archive" / "taken.jpg").read_bytes() == taken
    (root / "archive" / "taken.jpg").unlink()
    report = assert_each_exactly_once(root, all_names, ledger)
    held = {
        r: sidecar_reason(root, quarantine_rel(r, flat=r.startswith("qtrap/")))
        for r in report["quarantined"]
    }
    assert "hard.jpg" in report["out"]
    assert held.get("trap/t.jpg") == "write_failed", held  # never written through the link
    assert "arch/a.jpg" in report["out"]  # archived under a flat name beside the link
    assert (root / "archive" / "arch__a.jpg").exists()
    for rel, reason in held.items():  # a symlink swapped in is moved as itself, never read
        assert rel in ("trap/t.jpg", "qtrap/bad.jpg") or rel.startswith("swap"), (rel, reason)
    ledger.note(
        f"fs attacks: decoy untouched; {len(swapped)} symlink swaps, album swapped after "
        f"{len(album_done)} of 8 files, held: {sorted(set(held.values()))}"
    )


def test_hard_link_planted_at_the_temp_name_is_replaced_not_written(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    spool = Spool(tmp_path / "root", "one")
    spool.prepare()
    try:
        jpeg(spool.inbox / "x.jpg", 1)
        claim = spool.claim(spool.inbox / "x.jpg")
        assert claim is not None
        temp = spool.outbox / temp_name(f"{claim.output_rel.name}", claim.id)
        os.link(victim, temp)  # an attacker who guessed the claim id
        final = spool.commit(claim, b"the output")
        assert final.read_bytes() == b"the output"
        assert victim.read_text() == "precious" and victim.stat().st_nlink == 1
    finally:
        spool.close()


def test_folder_swapped_for_a_symlink_during_claims_pulls_nothing_in(
    tmp_path: Path, ledger: Ledger
) -> None:
    """The race between the checks and the claim's rename, run 200 times: a folder of the
    inbox is replaced by a symlink to a decoy folder holding a file of the same name."""
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "f.jpg").write_bytes(b"DECOY")
    spool = Spool(tmp_path / "root", "race")
    spool.prepare()
    rng = random.Random(5)
    claimed = 0
    try:
        for i in range(200):
            folder = spool.inbox / "dir"
            folder.mkdir()
            (folder / "f.jpg").write_bytes(b"REAL")
            delay = rng.uniform(0, 0.004)

            def swap(folder: Path = folder, i: int = i, delay: float = delay) -> None:
                time.sleep(delay)
                os.rename(folder, tmp_path / f"moved{i}")
                folder.symlink_to(decoy, target_is_directory=True)

            swapper = threading.Thread(target=swap)
            swapper.start()
            claim = spool.claim(folder / "f.jpg")
            swapper.join()
            assert (decoy / "f.jpg").read_bytes() == b"DECOY", f"round {i}: decoy pulled in"
            if claim is not None:
                claimed += 1
                with spool.open_claim(claim) as handle:
                    assert handle.read() == b"REAL"
                spool.commit(claim, b"out")
            folder.unlink()
    finally:
        spool.close()
    assert claimed > 0  # the real file was taken in the rounds the swap came late
    ledger.add(faults=200, files_in=claimed, outputs=claimed)
