// Resolving "${NAME}" and "file:/path" secret references. Error texts name the reference, never
// the value: they end up in logs and in `--check` output.
#include "secret.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <system_error>

namespace pgsluice::config::detail {

namespace {

// Large enough for any password, verifier or token; small enough that pointing file: at the
// wrong thing (a log, a device) fails instead of reading it into memory.
constexpr std::size_t kMaxSecretFileBytes = 64 * 1024;

bool is_env_name(std::string_view name) {
  if (name.empty() || (name.front() >= '0' && name.front() <= '9')) return false;
  for (const char c : name) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok) return false;
  }
  return true;
}

SecretResolution failure(std::string message) {
  return SecretResolution{std::nullopt, std::move(message)};
}

SecretResolution from_environment(const std::string& name, const std::map<std::string, std::string>* env) {
  std::optional<std::string> value;
  if (env != nullptr) {
    if (const auto it = env->find(name); it != env->end()) value = it->second;
  } else if (const char* raw = std::getenv(name.c_str()); raw != nullptr) {
    value = raw;
  }
  if (!value) return failure("environment variable " + name + " is not set");
  if (value->empty()) return failure("environment variable " + name + " is set but empty");
  return SecretResolution{std::move(value), {}};
}

std::string errno_text(int error) {
  return std::generic_category().message(error);
}

SecretResolution from_file(const std::string& path) {
  if (path.empty()) return failure("file: reference without a path (write file:/run/secrets/name)");
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return failure("cannot read secret file " + path + ": " + errno_text(errno));

  std::string content;
  char buffer[4096];
  bool too_large = false;
  while (true) {
    const std::size_t n = std::fread(buffer, 1, sizeof buffer, file);
    content.append(buffer, n);
    if (content.size() > kMaxSecretFileBytes) {
      too_large = true;
      break;
    }
    if (n < sizeof buffer) break;
  }
  const bool read_error = std::ferror(file) != 0;
  const int read_errno = errno;
  std::fclose(file);

  if (read_error) return failure("cannot read secret file " + path + ": " + errno_text(read_errno));
  if (too_large) return failure("secret file " + path + " is larger than 64 KiB");
  // Editors and `echo` add one trailing newline; it is never part of the secret.
  if (content.ends_with('\n')) {
    content.pop_back();
    if (content.ends_with('\r')) content.pop_back();
  }
  if (content.empty()) return failure("secret file " + path + " is empty");
  return SecretResolution{std::move(content), {}};
}

}  // namespace

SecretResolution resolve_secret(const std::string& reference, const std::map<std::string, std::string>* env) {
  if (reference.starts_with("${")) {
    if (!reference.ends_with('}') || reference.size() < 4) {
      return failure("malformed environment reference: write ${NAME} as the whole value");
    }
    const std::string name = reference.substr(2, reference.size() - 3);
    if (!is_env_name(name)) {
      return failure("malformed environment reference: a variable name has letters, digits and _ only");
    }
    return from_environment(name, env);
  }
  if (reference.starts_with("file:")) return from_file(reference.substr(5));
  return SecretResolution{reference, {}};
}

}  // namespace pgsluice::config::detail
