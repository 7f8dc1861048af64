// libFuzzer target: the YAML configuration loader and its validation (config::load_from_string), the
// text SIGHUP and --check read. ${NAME} secrets resolve from a fixed map, not the process
// environment; inputs naming a file: secret are left out (the fuzzer could point it at a FIFO or a
// terminal and wait forever, or read whatever file it guesses).
// None may crash, leak or throw past load_from_string; a configuration it accepts must keep the
// promises the rest of pgsluice relies on, and an error never shows a secret's value.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "fuzz_check.hpp"
#include "pgsluice/config/config.hpp"

using namespace pgsluice::config;

namespace {

constexpr std::string_view kSecretValue = "fuzz-secret-value";

const std::map<std::string, std::string>& environment() {
  static const std::map<std::string, std::string> env{
      {"PGSLUICE_ADMIN_PASSWORD", std::string(kSecretValue)},
      {"AUTH_DB_PASSWORD", std::string(kSecretValue)},
      {"PASSWORD", std::string(kSecretValue)},
      {"VERIFIER",
       "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
       "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="},
      {"EMPTY", ""},
  };
  return env;
}

void check_accepted(const Config& config) {
  FUZZ_CHECK(!config.backends.empty() && !config.services.empty());
  FUZZ_CHECK(config.replicas >= 1);
  for (const auto& service : config.services) {
    FUZZ_CHECK(config.backends.contains(service.backend));
    FUZZ_CHECK(config.users.contains(service.match_user));
    FUZZ_CHECK(service.min_connections >= 0 && service.min_connections <= service.max_connections);
    // No two services match the same (user, database): each one is found for its own pair.
    FUZZ_CHECK(config.find_service(service.match_user, service.match_database) == &service);
  }
  for (const auto& [name, backend] : config.backends) {
    FUZZ_CHECK(!allocation_table(config, name).empty());
  }
  (void)allocation_table(config);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  if (text.find("file:") != std::string::npos) return 0;

  const auto result = load_from_string(text, &environment());
  FUZZ_CHECK(result.config.has_value() == result.errors.empty());
  if (result.config) check_accepted(*result.config);
  if (text.find(kSecretValue) == std::string::npos) {
    for (const auto& error : result.errors) {
      FUZZ_CHECK(error.line >= 0 && error.message.find(kSecretValue) == std::string::npos);
    }
  }

  // The value parsers on their own (a value in the file is one line).
  if (size <= 64) {
    (void)parse_duration(text);
    (void)parse_fine_duration(text);
    (void)parse_byte_size(text);
  }
  return 0;
}
