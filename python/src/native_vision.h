// Registers Vision (libmtmd through VisionEncoder), VideoEncoder and the
// video layout functions on the extension (native_vision.cpp).
#pragma once

#include <pybind11/pybind11.h>

void register_vision(pybind11::module_ & mod);
