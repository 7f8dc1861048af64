// pgsluice: command line, configuration loading, and the daemon.
#include <boost/program_options.hpp>
#include <iostream>

#include "daemon.hpp"
#include "logging.hpp"
#include "runtime.hpp"
#include "pgsluice/config/config.hpp"

namespace po = boost::program_options;
using namespace pgsluice;

namespace {

void print_errors(const std::string& path, const std::vector<config::ConfigError>& errors) {
  for (const auto& error : errors) {
    if (error.line > 0) {
      std::cerr << path << ":" << error.line << ": " << error.message << "\n";
    } else {
      std::cerr << path << ": " << error.message << "\n";
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  po::options_description options("pgsluice — a PostgreSQL connection-pooling proxy\n\nOptions");
  options.add_options()
      ("help,h", "show this help")
      ("version", "print the version")
      ("config,c", po::value<std::string>()->default_value("/etc/pgsluice/pgsluice.yaml"), "configuration file")
      ("check", "validate the configuration, print the connection allocation, and exit 0 (valid) or 1")
      ("log-format", po::value<std::string>(), "text or json (overrides log.format)")
      ("log-level", po::value<std::string>(), "trace, debug, info, warn, error, critical, off (overrides log.level)");
  po::variables_map args;
  try {
    po::store(po::parse_command_line(argc, argv, options), args);
    po::notify(args);
  } catch (const std::exception& e) {
    std::cerr << "pgsluice: " << e.what() << "\n" << options << "\n";
    return 2;
  }
  if (args.count("help")) {
    std::cout << options << "\n";
    return 0;
  }
  if (args.count("version")) {
    std::cout << "pgsluice " << PGSLUICE_VERSION << "\n";
    return 0;
  }

  const std::string path = args["config"].as<std::string>();
  auto loaded = config::load_from_file(path);
  if (!loaded.config) {
    print_errors(path, loaded.errors);
    std::cerr << "pgsluice: " << loaded.errors.size() << " error(s) in " << path << "\n";
    return 1;
  }
  {
    std::vector<std::string> tls_errors;
    if (!app::build_tls(*loaded.config, tls_errors)) {
      for (const auto& error : tls_errors) std::cerr << path << ": " << error << "\n";
      std::cerr << "pgsluice: " << tls_errors.size() << " error(s) in " << path << "\n";
      return 1;
    }
  }
  if (args.count("check")) {
    std::cout << config::allocation_table(*loaded.config);
    std::cout << path << ": configuration is valid\n";
    return 0;
  }

  std::string format = loaded.config->log_format == config::LogFormat::json ? "json" : "text";
  std::string level = loaded.config->log_level;
  if (args.count("log-format")) format = args["log-format"].as<std::string>();
  if (args.count("log-level")) level = args["log-level"].as<std::string>();
  if (format != "text" && format != "json") {
    std::cerr << "pgsluice: --log-format must be text or json\n";
    return 2;
  }
  if (!app::setup_logging(format, level)) {
    std::cerr << "pgsluice: unknown log level \"" << level << "\"\n";
    return 2;
  }
  return app::run_daemon(std::make_shared<const config::Config>(std::move(*loaded.config)), path,
                         app::DaemonOptions{.log_level_from_command_line = args.count("log-level") > 0});
}
