// Registers Conversation, Answer and line_segments on the extension (native_conversation.cpp).
#pragma once

#include <pybind11/pybind11.h>

void register_conversation(pybind11::module_ & mod);
