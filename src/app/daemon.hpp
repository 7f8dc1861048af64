#pragma once
// The running daemon: wires config, pools, sessions, the listener and signals together.
#include <memory>
#include <string>

#include "pgsluice/config/config.hpp"

namespace pgsluice::app {

struct DaemonOptions {
  bool log_level_from_command_line = false;  // --log-level given: a reload does not change the level
};

// Runs until SIGTERM/SIGINT. Returns the process exit code.
int run_daemon(std::shared_ptr<const config::Config> config, const std::string& config_path,
               DaemonOptions options = {});

}  // namespace pgsluice::app
