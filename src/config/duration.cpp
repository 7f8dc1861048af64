// Durations in the config: an unsigned integer and a unit, "500ms", "1s", "10m", "2h". Only "0"
// may be written without a unit, because a bare "30" is ambiguous (seconds? milliseconds?) and
// guessing wrong turns a timeout into one a thousand times too long or too short.
#include <charconv>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "pgsluice/config/config.hpp"

namespace pgsluice::config {

namespace {

std::optional<std::int64_t> unit_milliseconds(std::string_view unit) {
  if (unit == "ms") return 1;
  if (unit == "s") return 1000;
  if (unit == "m") return 60 * 1000;
  if (unit == "h") return 60 * 60 * 1000;
  return std::nullopt;
}

}  // namespace

std::optional<Duration> parse_duration(const std::string& text) {
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9')
    ++digits;
  if (digits == 0) return std::nullopt;  // also rejects "", "-1s", "+1s", " 1s"

  std::int64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + digits, value);
  if (ec != std::errc{} || end != text.data() + digits) return std::nullopt;

  const std::string_view unit = std::string_view(text).substr(digits);
  if (unit.empty()) {
    if (value == 0) return Duration::zero();
    return std::nullopt;
  }
  const auto scale = unit_milliseconds(unit);
  if (!scale) return std::nullopt;
  if (value > std::numeric_limits<Duration::rep>::max() / *scale) return std::nullopt;
  return Duration(value * *scale);
}

std::optional<std::chrono::microseconds> parse_fine_duration(const std::string& text) {
  for (std::string_view unit : {"us", "µs"}) {
    if (text.size() > unit.size() && std::string_view(text).substr(text.size() - unit.size()) == unit) {
      const std::string number = text.substr(0, text.size() - unit.size());
      if (number.empty() || number.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
      std::int64_t value = 0;
      const auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), value);
      if (ec != std::errc{} || end != number.data() + number.size()) return std::nullopt;
      return std::chrono::microseconds(value);
    }
  }
  auto coarse = parse_duration(text);
  if (!coarse || coarse->count() > std::numeric_limits<std::int64_t>::max() / 1000) return std::nullopt;
  return std::chrono::duration_cast<std::chrono::microseconds>(*coarse);
}

}  // namespace pgsluice::config
