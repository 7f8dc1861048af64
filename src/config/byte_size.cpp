// Byte sizes in the config: a plain number of bytes or a number and a unit, "64MB", "16MiB".
// KB/MB/GB mean 1024-multiples, as postgresql.conf's kB/MB/GB do, so "64MB" here is the same
// 64 MiB the Postgres docs talk about.
#include <cctype>
#include <charconv>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "pgsluice/config/config.hpp"

namespace pgsluice::config {

namespace {

std::optional<std::uint64_t> unit_bytes(std::string_view unit) {
  std::string upper;
  for (const char c : unit)
    upper.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  if (upper.empty() || upper == "B") return 1;
  if (upper == "KB" || upper == "KIB") return std::uint64_t{1} << 10;
  if (upper == "MB" || upper == "MIB") return std::uint64_t{1} << 20;
  if (upper == "GB" || upper == "GIB") return std::uint64_t{1} << 30;
  return std::nullopt;
}

}  // namespace

std::optional<std::uint64_t> parse_byte_size(const std::string& text) {
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9')
    ++digits;
  if (digits == 0) return std::nullopt;

  std::uint64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + digits, value);
  if (ec != std::errc{} || end != text.data() + digits) return std::nullopt;

  std::string_view unit = std::string_view(text).substr(digits);
  if (unit.starts_with(' ')) {  // "64 MB" reads naturally; "64 " is a typo
    while (unit.starts_with(' '))
      unit.remove_prefix(1);
    if (unit.empty()) return std::nullopt;
  }
  const auto scale = unit_bytes(unit);
  if (!scale) return std::nullopt;
  if (value > std::numeric_limits<std::uint64_t>::max() / *scale) return std::nullopt;
  return value * *scale;
}

}  // namespace pgsluice::config
