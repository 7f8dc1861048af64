#pragma once
// The running daemon: wires config, pools, sessions, the listener and signals together.
#include <memory>

#include "pgsluice/config/config.hpp"

namespace pgsluice::app {

// Runs until SIGTERM/SIGINT. Returns the process exit code.
int run_daemon(std::shared_ptr<const config::Config> config);

}  // namespace pgsluice::app
