#pragma once
// The fuzz targets' own assertion: a property the decoders promise (a message pgsluice builds from
// what it decoded decodes to the same thing) that does not hold is a finding like a crash. Kept on in
// every build, unlike assert(), and aborts so that libFuzzer saves the input.
#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(condition)                                                                 \
  do {                                                                                        \
    if (!(condition)) {                                                                       \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                           \
    }                                                                                         \
  } while (false)
