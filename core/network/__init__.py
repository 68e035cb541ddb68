"""The network: the post's model and its variants, the folded inference form, image spaces,
shapes and precisions."""
