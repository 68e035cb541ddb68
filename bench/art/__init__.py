"""The art benchmark: does a model turn real photographs into pictures in its collection's
manner, judged on the picture a person gets?

``python -m bench.art (--model-a A.safetensors --model-b B.safetensors | --train) [--quick]
[--out DIR]`` runs scikit-image's bundled colour photographs (nothing downloaded; two
portraits among them) through two guided checkpoints f_A and f_B, trained the same way on
two procedural collections A and B (``bench.art.recipe``: the shipped model's recipe, so A
*is* the default model and B its woodcut twin; ``--train`` builds them, cached by the
recipe's hash). Each photo is resized as the daemon resizes it at its default output size
(512 px, fit) and goes through the product's path at the checkpoints' recommended settings
(working size included), at several strengths (``bench.art.evaluate``). Per strength it
reports, with the style signature d of ``bench.art.style_signature`` (every image viewed at
128 px on its shorter side) against each collection's held-out split drawn at the working
size:

- movement toward the collection: d(f_A(photos), A) / d(photos, A), and the same for B;
- specificity: d(f_A(photos), A) < d(f_B(photos), A), and d(f_B(photos), B) < d(f_A(photos), B);
- content kept: SSIM of blurred luminance between each output and its photo, over all
  photos and over the portraits;
- levels: mean absolute difference to the photo in 0..255 levels;
- with ``colour = keep``: the mean CIE Lab chroma difference to the photo, and levels,
  against the oracle denoising floor at low strength (``bench.art.denoise_floor``);
- seconds and network passes per image.

It writes ``art-bench.md``, ``art-bench.json``, ``art-gallery.png`` (rows: each photo
through A and through B, columns: the photo and the strengths, 256 px tiles; last row: A
with ``colour = keep``) and ``model-card.png`` (each portrait at full size: photo, A, A with
``keep``) into ``--out`` (default ``docs/``), and prints the must-hold thresholds
(``bench.art.checks``) as PASS or SHORT against the measured figures.
"""
