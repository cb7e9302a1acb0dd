"""Helpers of the test-suite (not tests): tiny models made with transformers
and our converter (tiny_models, tiny_vlms), the pinned llama.cpp's own
converter and backend sources, the CMake build of the C tests, checkpoint
files, HT-Sparse comparisons, references of what libmtmd and the parity bars
compute (parity, mtmd_reference), the pass-key haystack, the CLI as a user
runs it with the demo model, readable parametrize ids, and the import graph
of the package. Test modules import from here, never from each other;
conftest.py imports the fixtures defined here once for every test."""
