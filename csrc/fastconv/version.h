// fastconv's version, as setup.py and fastconv_ext.__version__ give it (a
// test checks they agree); part of the autotuning cache's fingerprint.
#pragma once

namespace fastconv {
inline constexpr const char* kVersion = "0.1.0";
}  // namespace fastconv
