"""The art benchmark: do two denoise models move real photographs toward their collections?

``python -m bench.art (--model-a A.safetensors --model-b B.safetensors | --train) [--quick]
[--out DIR]`` runs scikit-image's bundled colour photographs (nothing downloaded) through
two denoise checkpoints f_A and f_B, trained the same way on two procedural collections A and
B (``bench.art.recipe``; ``--train`` builds them from its recipe, cached by the recipe's
hash), at several SDEdit strengths, and reports per strength, with the style signature d of
``bench.art.style_signature`` and the collections' held-out splits:

- movement toward the collection: d(f_A(photos), A) / d(photos, A), and the same for B;
- specificity: d(f_A(photos), A) < d(f_B(photos), A), and d(f_B(photos), B) < d(f_A(photos), B);
- content kept: SSIM of blurred luminance between each output and its photo (mean);
- levels: mean absolute difference to the photo in 0..255 levels;
- cost at the checkpoint's recommended settings: ms per image per sampling step through the
  engine against the model-alone floor (the same engine's network call, same size, batch,
  threads and precision, no sampler), measured alternately in one run, medians.

Photos are centre-cropped square and resized to the models' training size, the scale their
textures were learnt at. It writes ``art-bench.md``, ``art-bench.json`` and
``art-gallery.png`` (rows: each photo through A and through B, columns: the photo and the
strengths; last rows: samples from noise) into ``--out`` (default ``docs/``), and prints the
must-hold thresholds (``bench.art.checks``) as PASS or SHORT against the measured figures.
"""
