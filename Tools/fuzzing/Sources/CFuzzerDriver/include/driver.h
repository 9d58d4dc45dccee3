#pragma once
#include <stddef.h>
#include <stdint.h>

// libFuzzer's entry point for a program with a main of its own (compiler-rt FuzzerInterface.h):
// parses the libFuzzer flags in argv and runs `callback` on every input.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
