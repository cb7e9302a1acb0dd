// Registers the `ops` submodule of the extension (native_ops.cpp).
#pragma once

#include <pybind11/pybind11.h>

void register_ops(pybind11::module_ & parent);
