#pragma once
#include <string>

namespace pgsluice::app {
// Sets up the default spdlog logger: text or JSON lines on stderr, at `level`.
// Returns false when the level name is unknown.
bool setup_logging(const std::string& format, const std::string& level);
}  // namespace pgsluice::app
