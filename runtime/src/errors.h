// Errors raised by the runtime. Every failure a user can cause (bad file, bad
// argument, prompt too long) is one of these, thrown before any ggml call that
// would abort the process; the Python binding maps each kind to an exception.
#pragma once

#include <cstdarg>
#include <stdexcept>
#include <string>

namespace hts {

enum class ErrorKind {
    InvalidArgument,   // a bad parameter value
    FileNotFound,      // the model file does not exist or cannot be opened
    InvalidFile,       // not a GGUF file, truncated, or inconsistent tensors
    UnsupportedModel,  // architecture or tensor layout this runtime does not run
    ContextOverflow,   // the prompt or generation does not fit the context
    Backend,           // a ggml backend failed (allocation, compute)
    Aborted,           // a progress or abort callback asked to stop
};

class Error : public std::runtime_error {
public:
    Error(ErrorKind kind, const std::string & message) : std::runtime_error(message), kind_(kind) {}
    ErrorKind kind() const { return kind_; }

private:
    ErrorKind kind_;
};

// printf-style message formatting for errors.
std::string format(const char * fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

[[noreturn]] inline void fail(ErrorKind kind, const std::string & message) { throw Error(kind, message); }

}  // namespace hts
