#include "logging.hpp"

#include <limits.h>
#include <unistd.h>

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <mutex>

namespace pgsluice::app {

namespace {

// The message as a JSON string body: quotes, backslashes and control characters escaped.
class JsonEscapedMessage final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    for (char c : std::string_view(msg.payload.data(), msg.payload.size())) {
      switch (c) {
        case '"': dest.append(std::string_view("\\\"")); break;
        case '\\': dest.append(std::string_view("\\\\")); break;
        case '\n': dest.append(std::string_view("\\n")); break;
        case '\r': dest.append(std::string_view("\\r")); break;
        case '\t': dest.append(std::string_view("\\t")); break;
        default:
          if (static_cast<unsigned char>(c) < 0x20) {
            fmt::format_to(std::back_inserter(dest), "\\u{:04x}", static_cast<unsigned>(c));
          } else {
            dest.push_back(c);
          }
      }
    }
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<JsonEscapedMessage>(); }
};

// Lines on a descriptor (stderr), each formatted on the thread that logs it and written with one
// write(2) of its own: workers logging at once share no lock and no stdio buffer. spdlog's stderr
// sink took a process-wide mutex twice per line (write, then flush) and went through stdio's lock,
// a lock the workers contended for in a login storm; a connection line cost a login about 3 µs of
// CPU with it and 2 µs with this, most of it the write itself. A line of up to PIPE_BUF bytes reaches a pipe whole (a container runtime's
// log pipe); a regular file serialises the writers' offsets. Longer lines (debug logging of long
// statements) take a lock among themselves so that none is cut into another.
class LineSink final : public spdlog::sinks::sink {
 public:
  explicit LineSink(int fd) : fd_(fd) {}

  void log(const spdlog::details::log_msg& msg) override {
    // A thread's copy of the formatter (spdlog's keeps per-second time caches, not thread-safe),
    // made again when the formatter was replaced.
    struct Local {
      std::uint64_t version = 0;
      std::unique_ptr<spdlog::formatter> formatter;
      spdlog::memory_buf_t line;
    };
    thread_local Local local;
    const auto version = version_.load(std::memory_order_acquire);
    if (local.version != version || !local.formatter) {
      std::lock_guard lock(mutex_);
      local.formatter = formatter_->clone();
      local.version = version_.load(std::memory_order_relaxed);
    }
    local.line.clear();
    local.formatter->format(msg, local.line);
    if (local.line.size() <= PIPE_BUF) {
      write_all(local.line.data(), local.line.size());
      return;
    }
    std::lock_guard lock(long_lines_);
    write_all(local.line.data(), local.line.size());
  }
  void flush() override {}  // nothing is held back
  void set_pattern(const std::string& pattern) override {
    set_formatter(std::make_unique<spdlog::pattern_formatter>(pattern));
  }
  void set_formatter(std::unique_ptr<spdlog::formatter> formatter) override {
    std::lock_guard lock(mutex_);
    formatter_ = std::move(formatter);
    // Unique across sinks, so that a thread's copy is never taken for another sink's.
    version_.store(next_version_.fetch_add(1, std::memory_order_relaxed), std::memory_order_release);
  }

 private:
  void write_all(const char* data, std::size_t size) const {
    while (size > 0) {
      const auto n = ::write(fd_, data, size);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;  // a closed or broken log descriptor loses the line, nothing else
      data += n;
      size -= static_cast<std::size_t>(n);
    }
  }

  inline static std::atomic<std::uint64_t> next_version_{1};
  const int fd_;
  std::mutex mutex_;  // guards formatter_ while it is replaced or copied
  std::unique_ptr<spdlog::formatter> formatter_ = std::make_unique<spdlog::pattern_formatter>();
  std::atomic<std::uint64_t> version_{next_version_.fetch_add(1, std::memory_order_relaxed)};
  std::mutex long_lines_;
};

}  // namespace

bool setup_logging(const std::string& format, const std::string& level) {
  const auto parsed = spdlog::level::from_str(level);
  if (parsed == spdlog::level::off && level != "off") return false;
  auto logger = std::make_shared<spdlog::logger>("pgsluice", std::make_shared<LineSink>(STDERR_FILENO));
  if (format == "json") {
    auto formatter = std::make_unique<spdlog::pattern_formatter>();
    formatter->add_flag<JsonEscapedMessage>('*').set_pattern(
        R"({"time":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l","thread":%t,"msg":"%*"})");
    logger->set_formatter(std::move(formatter));
  } else {
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ [%t] %v");
  }
  logger->set_level(parsed);
  spdlog::set_default_logger(std::move(logger));
  return true;
}

}  // namespace pgsluice::app
