#pragma once
// The running daemon: wires config, pools, sessions, the listener and signals together.
#include <memory>
#include <string>

#include "pgsluice/config/config.hpp"

namespace pgsluice::app {

// Runs until SIGTERM/SIGINT. Returns the process exit code.
int run_daemon(std::shared_ptr<const config::Config> config, const std::string& config_path);

}  // namespace pgsluice::app
