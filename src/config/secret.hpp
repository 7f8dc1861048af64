#pragma once
// Secret references in the config (DESIGN §5): "${NAME}" from the environment, "file:/path" from a
// file (Kubernetes Secret volumes, Docker secrets), anything else is the literal value.
// Private to src/config/.
#include <map>
#include <optional>
#include <string>

namespace pgsluice::config::detail {

struct SecretResolution {
  std::optional<std::string> value;  // set on success
  // Set on failure. It names the variable or file and never contains the secret itself.
  std::string error;
};

// `env` is consulted instead of the process environment when it is not null.
SecretResolution resolve_secret(const std::string& reference, const std::map<std::string, std::string>* env);

}  // namespace pgsluice::config::detail
