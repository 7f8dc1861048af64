#pragma once
// Reading one YAML mapping of the config: its keys checked against the schema, its values turned
// into typed fields, every problem collected with its 1-based line instead of stopping at the
// first. Private to src/config/: yaml-cpp never appears in a public header.
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pgsluice/config/config.hpp"

namespace pgsluice::config::detail {

// yaml-cpp marks are 0-based and -1 for a node without a position; ConfigError lines are 1-based
// with 0 meaning "no particular line".
int line_of(const YAML::Node& node);

class ErrorList {
 public:
  void add(int line, std::string message) { errors_.push_back(ConfigError{line, std::move(message)}); }
  [[nodiscard]] bool empty() const { return errors_.empty(); }
  [[nodiscard]] std::size_t size() const { return errors_.size(); }
  // Sorted by line (line 0 first), in order of discovery within a line.
  std::vector<ConfigError> take_sorted();

 private:
  std::vector<ConfigError> errors_;
};

// What every section of one load shares.
struct LoadContext {
  ErrorList errors;
  const std::map<std::string, std::string>* env = nullptr;  // null = the process environment
};

struct Entry {
  std::string key;
  int key_line = 0;
  YAML::Node value;
};

// The entries of a mapping in file order. Null (`key:` with nothing after it) reads as an empty
// mapping; any other non-mapping, a non-scalar key and a repeated key are reported.
std::vector<Entry> mapping_entries(const YAML::Node& node, const std::string& path, int line,
                                   ErrorList& errors);

template <class E>
using Choices = std::initializer_list<std::pair<std::string_view, E>>;

// One mapping at `path` ("services.feed", "" for the top level); `line` is the line of its key
// (0: the mapping's own first line), where "missing" errors point. Unknown keys are reported when
// it is built. Every read_* leaves `out` alone and returns true when the key is absent (the default
// stands), converts and returns true when it is valid, and reports and returns false otherwise.
class Section {
 public:
  Section(LoadContext& context, const YAML::Node& node, std::string path, int line,
          std::initializer_list<std::string_view> allowed);

  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] int line() const { return line_; }
  [[nodiscard]] const std::vector<Entry>& entries() const { return entries_; }
  [[nodiscard]] const Entry* find(std::string_view key) const;
  [[nodiscard]] bool has(std::string_view key) const { return find(key) != nullptr; }
  // The line of key's value; the section's own line when the key is absent.
  [[nodiscard]] int line_at(std::string_view key) const;
  [[nodiscard]] std::string path_of(std::string_view key) const;

  // "<path>.<key>: <message>" at the key's line.
  void error(std::string_view key, const std::string& message) const;
  // "<path>: <message>" at the section's line.
  void error(const std::string& message) const;

  // The mapping under `key` (empty when absent).
  [[nodiscard]] Section child(std::string_view key, std::initializer_list<std::string_view> allowed) const;

  bool read(std::string_view key, std::string& out) const;  // a non-empty scalar
  bool read(std::string_view key, int& out, int min, int max = std::numeric_limits<int>::max()) const;
  bool read(std::string_view key, bool& out) const;
  bool read_duration(std::string_view key, Duration& out, bool allow_zero) const;
  // A duration that may be given in microseconds too ("200us"); zero allowed.
  bool read_fine_duration(std::string_view key, std::chrono::microseconds& out) const;
  bool read_byte_size(std::string_view key, std::uint32_t& out, std::uint64_t min, std::uint64_t max) const;
  bool read_port(std::string_view key, std::uint16_t& out) const;
  bool read_endpoint(std::string_view key, Endpoint& out) const;
  // A password-like value, resolved through ${ENV} / file:. Never echoed in a message.
  bool read_secret(std::string_view key, std::optional<std::string>& out) const;
  // A sequence of non-empty scalars, each with its line.
  bool read_list(std::string_view key, std::vector<std::pair<std::string, int>>& out) const;

  template <class E>
  bool read_choice(std::string_view key, E& out, Choices<E> choices) const {
    const auto text = scalar(key);
    if (!text) return !has(key);
    std::vector<std::string_view> names;
    for (const auto& [name, value] : choices) {
      if (*text == name) {
        out = value;
        return true;
      }
      names.push_back(name);
    }
    report_bad_choice(key, *text, names);
    return false;
  }

 private:
  // The key's scalar text; reports a null or non-scalar value. nullopt when absent or reported.
  [[nodiscard]] std::optional<std::string> scalar(std::string_view key, bool secret = false) const;
  void report_bad_choice(std::string_view key, const std::string& text,
                         const std::vector<std::string_view>& names) const;

  LoadContext* context_;
  std::string path_;
  int line_;
  std::vector<Entry> entries_;
};

}  // namespace pgsluice::config::detail
