// Typed reading of YAML mappings with every problem collected, each with its line.
#include "yaml_section.hpp"

#include <algorithm>
#include <charconv>

#include "secret.hpp"

namespace pgsluice::config::detail {

namespace {

std::string join(const std::vector<std::string_view>& names) {
  std::string out;
  for (const auto name : names) {
    if (!out.empty()) out += ", ";
    out += name;
  }
  return out;
}

std::string quoted(std::string_view text) {
  return "\"" + std::string(text) + "\"";
}

const char* kind_of(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Null:
      return "nothing";
    default:
      return "a value";
  }
}

bool all_digits(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::optional<std::uint16_t> parse_port(std::string_view text) {
  int port = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), port);
  if (ec != std::errc{} || end != text.data() + text.size() || port < 1 || port > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(port);
}

// "host:port", "[::1]:port".
std::optional<Endpoint> parse_endpoint(std::string_view text) {
  std::string_view host;
  std::string_view port;
  if (text.starts_with('[')) {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return std::nullopt;
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return std::nullopt;  // bare IPv6 needs brackets
  }
  const auto number = parse_port(port);
  if (host.empty() || !number) return std::nullopt;
  return Endpoint{std::string(host), *number};
}

}  // namespace

int line_of(const YAML::Node& node) {
  const int line = node.Mark().line;
  return line < 0 ? 0 : line + 1;
}

std::vector<ConfigError> ErrorList::take_sorted() {
  std::stable_sort(errors_.begin(), errors_.end(),
                   [](const ConfigError& a, const ConfigError& b) { return a.line < b.line; });
  return std::move(errors_);
}

std::vector<Entry> mapping_entries(const YAML::Node& node, const std::string& path, int line,
                                   ErrorList& errors) {
  std::vector<Entry> entries;
  if (node.IsNull()) return entries;
  const std::string where = path.empty() ? "the configuration" : path;
  if (!node.IsMap()) {
    errors.add(line_of(node) != 0 ? line_of(node) : line,
               where + ": expected a mapping (key: value), got " + kind_of(node));
    return entries;
  }
  for (const auto& pair : node) {
    const YAML::Node& key = pair.first;
    if (!key.IsScalar()) {
      errors.add(line_of(key), where + ": a key must be a plain name, got " + kind_of(key));
      continue;
    }
    const auto first = std::find_if(entries.begin(), entries.end(),
                                    [&](const Entry& entry) { return entry.key == key.Scalar(); });
    if (first != entries.end()) {
      errors.add(line_of(key), where + ": key " + quoted(key.Scalar()) + " appears twice (first on line " +
                                   std::to_string(first->key_line) + ")");
      continue;
    }
    entries.push_back(Entry{key.Scalar(), line_of(key), pair.second});
  }
  return entries;
}

Section::Section(LoadContext& context, const YAML::Node& node, std::string path, int line,
                 std::initializer_list<std::string_view> allowed)
    : context_(&context),
      path_(std::move(path)),
      line_(line != 0 ? line : line_of(node)),  // a key's line, not its block's first line
      entries_(mapping_entries(node, path_, line_, context.errors)) {
  for (const auto& entry : entries_) {
    if (std::find(allowed.begin(), allowed.end(), entry.key) != allowed.end()) continue;
    const std::string where = path_.empty() ? "unknown top-level key " : path_ + ": unknown key ";
    context_->errors.add(entry.key_line,
                         where + quoted(entry.key) + " (allowed keys: " + join(std::vector(allowed)) + ")");
  }
}

const Entry* Section::find(std::string_view key) const {
  const auto it =
      std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.key == key; });
  return it == entries_.end() ? nullptr : &*it;
}

int Section::line_at(std::string_view key) const {
  const Entry* entry = find(key);
  if (entry == nullptr) return line_;
  // A null value's mark is wherever the parser noticed it ended, often the next line.
  if (entry->value.IsNull()) return entry->key_line;
  const int value_line = detail::line_of(entry->value);
  return value_line != 0 ? value_line : entry->key_line;
}

std::string Section::path_of(std::string_view key) const {
  return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
}

void Section::error(std::string_view key, const std::string& message) const {
  context_->errors.add(line_at(key), path_of(key) + ": " + message);
}

void Section::error(const std::string& message) const {
  context_->errors.add(line_, (path_.empty() ? std::string("the configuration") : path_) + ": " + message);
}

Section Section::child(std::string_view key, std::initializer_list<std::string_view> allowed) const {
  const Entry* entry = find(key);
  return Section(*context_, entry != nullptr ? entry->value : YAML::Node(), path_of(key),
                 entry != nullptr ? entry->key_line : line_, allowed);
}

std::optional<std::string> Section::scalar(std::string_view key, bool secret) const {
  const Entry* entry = find(key);
  if (entry == nullptr) return std::nullopt;
  if (entry->value.IsNull()) {
    error(key, "has no value");
    return std::nullopt;
  }
  if (!entry->value.IsScalar()) {
    error(key, std::string(secret ? "expected a string" : "expected a single value") + ", got " +
                   kind_of(entry->value));
    return std::nullopt;
  }
  return entry->value.Scalar();
}

void Section::report_bad_choice(std::string_view key, const std::string& text,
                                const std::vector<std::string_view>& names) const {
  error(key, quoted(text) + " is not one of " + join(names));
}

bool Section::read(std::string_view key, std::string& out) const {
  auto text = scalar(key);
  if (!text) return !has(key);
  if (text->empty()) {
    error(key, "must not be empty");
    return false;
  }
  out = std::move(*text);
  return true;
}

bool Section::read(std::string_view key, int& out, int min, int max) const {
  const auto text = scalar(key);
  if (!text) return !has(key);
  long long value = 0;
  const char* begin = text->data();
  const char* end = begin + text->size();
  const auto [stop, ec] = std::from_chars(begin, end, value);
  if (ec != std::errc{} || stop != end) {
    error(key, "expected a whole number, got " + quoted(*text));
    return false;
  }
  if (value < min || value > max) {
    const std::string range = max == std::numeric_limits<int>::max()
                                  ? "at least " + std::to_string(min)
                                  : "between " + std::to_string(min) + " and " + std::to_string(max);
    error(key, "must be " + range + ", got " + *text);
    return false;
  }
  out = static_cast<int>(value);
  return true;
}

bool Section::read(std::string_view key, bool& out) const {
  const Entry* entry = find(key);
  if (entry == nullptr) return true;
  if (!scalar(key)) return false;
  bool value = false;
  if (!YAML::convert<bool>::decode(entry->value, value)) {
    error(key, "expected true or false, got " + quoted(entry->value.Scalar()));
    return false;
  }
  out = value;
  return true;
}

bool Section::read_duration(std::string_view key, Duration& out, bool allow_zero) const {
  const auto text = scalar(key);
  if (!text) return !has(key);
  const auto value = parse_duration(*text);
  if (!value) {
    if (all_digits(*text)) {
      error(key, quoted(*text) + " has no unit; write " + *text + "ms, " + *text + "s, " + *text + "m or " +
                     *text + "h (only 0 may be written without a unit)");
    } else {
      error(key, quoted(*text) + " is not a duration; write a whole number and a unit: 500ms, 1s, 10m, 2h");
    }
    return false;
  }
  if (!allow_zero && *value == Duration::zero()) {
    error(key, "must be greater than 0");
    return false;
  }
  out = *value;
  return true;
}

bool Section::read_fine_duration(std::string_view key, std::chrono::microseconds& out) const {
  const auto text = scalar(key);
  if (!text) return !has(key);
  const auto value = parse_fine_duration(*text);
  if (!value) {
    error(key, quoted(*text) + " is not a duration; write a whole number and a unit: 200us, 1ms, 1s (0 for none)");
    return false;
  }
  out = *value;
  return true;
}

bool Section::read_byte_size(std::string_view key, std::uint32_t& out, std::uint64_t min,
                             std::uint64_t max) const {
  const auto text = scalar(key);
  if (!text) return !has(key);
  const auto value = parse_byte_size(*text);
  if (!value) {
    error(key, quoted(*text) + " is not a size; write bytes (65536) or a number and a unit: 64KB, 64MB, 1GB");
    return false;
  }
  if (*value < min || *value > max) {
    error(key, "must be between " + std::to_string(min) + " and " + std::to_string(max) + " bytes, got " +
                   std::to_string(*value));
    return false;
  }
  out = static_cast<std::uint32_t>(*value);
  return true;
}

bool Section::read_port(std::string_view key, std::uint16_t& out) const {
  const auto text = scalar(key);
  if (!text) return !has(key);
  const auto port = parse_port(*text);
  if (!port) {
    error(key, "must be a port number between 1 and 65535, got " + quoted(*text));
    return false;
  }
  out = *port;
  return true;
}

bool Section::read_endpoint(std::string_view key, Endpoint& out) const {
  const auto text = scalar(key);
  if (!text) return !has(key);
  auto endpoint = parse_endpoint(*text);
  if (!endpoint) {
    error(key, "expected host:port with a port between 1 and 65535 (e.g. 0.0.0.0:6432 or [::]:6432), got " +
                   quoted(*text));
    return false;
  }
  out = std::move(*endpoint);
  return true;
}

bool Section::read_secret(std::string_view key, std::optional<std::string>& out) const {
  const auto text = scalar(key, /*secret=*/true);
  if (!text) return !has(key);
  if (text->empty()) {
    error(key, "must not be empty");
    return false;
  }
  auto resolved = resolve_secret(*text, context_->env);
  if (!resolved.value) {
    error(key, resolved.error);
    return false;
  }
  out = std::move(resolved.value);
  return true;
}

bool Section::read_list(std::string_view key, std::vector<std::pair<std::string, int>>& out) const {
  const Entry* entry = find(key);
  if (entry == nullptr) return true;
  if (entry->value.IsNull()) return true;  // `users:` with nothing = an empty list
  if (!entry->value.IsSequence()) {
    error(key, std::string("expected a list ([a, b] or - lines), got ") + kind_of(entry->value));
    return false;
  }
  bool ok = true;
  for (const auto& item : entry->value) {
    if (!item.IsScalar() || item.Scalar().empty()) {
      context_->errors.add(detail::line_of(item) != 0 ? detail::line_of(item) : line_at(key),
                           path_of(key) + ": every item must be a name");
      ok = false;
      continue;
    }
    out.emplace_back(item.Scalar(), detail::line_of(item));
  }
  return ok;
}

}  // namespace pgsluice::config::detail
