"""The numerical core: tensors in, numbers out (docs/design.md §3, §5).

``validate`` (checks and messages), ``memory`` (the memory check before allocation),
``engine`` (the Gram route, the pair stage, CKA from HSICs in power-of-two units),
``batched_rows`` (the torch and Triton backends' linear rows on the device, one host read a
call),
``feature`` (the feature route), ``minibatch`` (``MinibatchCKA``, the accumulator) and
``jackknife``, ``sources`` (row sources: a layer in memory or in a .npy/.safetensors/HDF5
file, read a block of rows at a time), ``tiled`` and ``tiled_median`` (the tiled route and
its exact median heuristic), ``calibrate`` (permutation nulls), ``bootstrap`` (intervals
over samples) and ``calibrated_run`` (both fed by ``compare``'s batches). Imports only ``flashcka.backends`` (and the leaf
modules ``_warning``, ``_C``): nothing here knows of models or the command line.
"""
