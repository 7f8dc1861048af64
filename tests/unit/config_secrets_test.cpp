// Secrets: ${NAME} from the environment, file:/path from a file, literals as they are; failures
// name the variable or file and the line, and no message ever contains a secret.
#include <unistd.h>

#include <atomic>
#include <catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "pgsluice/config/config.hpp"

using namespace pgsluice::config;

namespace {

using Env = std::map<std::string, std::string>;

std::string describe(const LoadResult& result) {
  std::string out;
  for (const auto& error : result.errors)
    out += "line " + std::to_string(error.line) + ": " + error.message + "\n";
  return out;
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

// A config whose user `app` has `user_line` (line 3) and whose service has `service_line` (line 7).
std::string config_with(const std::string& user_line, const std::string& service_line = "") {
  return "backends: { db: {} }\n"
         "users:\n"
         "  app: " +
         user_line +
         "\n"
         "services:\n"
         "  app:\n"
         "    match: { user: app, database: d }\n" +
         (service_line.empty() ? std::string() : "    " + service_line + "\n");
}

// A file in the temp directory, removed when the test ends.
class TempFile {
 public:
  explicit TempFile(const std::string& content) {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("pgsluice_config_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::ofstream(path_, std::ios::binary) << content;
  }
  ~TempFile() {
    std::error_code ignored;
    std::filesystem::remove(path_, ignored);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  [[nodiscard]] std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace

TEST_CASE("${NAME} resolves from the env map for users and server passwords", "[config][secrets]") {
  const Env env{{"APP_PASSWORD", "from-env"}, {"SERVER_PASSWORD", "server-side"}};
  const LoadResult result = load_from_string(
      config_with(R"({ password: "${APP_PASSWORD}" })", R"(server_password: "${SERVER_PASSWORD}")"), &env);
  INFO(describe(result));
  REQUIRE(result.config);
  CHECK(result.config->users.at("app").password == "from-env");
  CHECK(result.config->services.at(0).server_password == "server-side");
}

TEST_CASE("${NAME} resolves from the process environment when no map is given", "[config][secrets]") {
  const std::string name = "PGSLUICE_TEST_SECRET_" + std::to_string(::getpid());
  ::setenv(name.c_str(), "process-env-value", 1);
  const LoadResult result = load_from_string(config_with("{ password: \"${" + name + "}\" }"));
  ::unsetenv(name.c_str());
  INFO(describe(result));
  REQUIRE(result.config);
  CHECK(result.config->users.at("app").password == "process-env-value");
}

TEST_CASE("the env map replaces the process environment rather than adding to it", "[config][secrets]") {
  ::setenv("PGSLUICE_TEST_ONLY_IN_PROCESS", "value", 1);
  const Env env;
  const LoadResult result =
      load_from_string(config_with(R"({ password: "${PGSLUICE_TEST_ONLY_IN_PROCESS}" })"), &env);
  ::unsetenv("PGSLUICE_TEST_ONLY_IN_PROCESS");
  REQUIRE(result.errors.size() == 1);
  CHECK(result.errors[0].line == 3);
}

TEST_CASE("an unset or empty environment variable names the variable and the line", "[config][secrets]") {
  const Env env{{"EMPTY", ""}};
  const LoadResult result = load_from_string(
      config_with(R"({ password: "${MISSING_PASSWORD}" })", R"(server_password: "${EMPTY}")"), &env);
  INFO(describe(result));
  REQUIRE_FALSE(result.config);
  REQUIRE(result.errors.size() == 2);
  CHECK(result.errors[0].line == 3);
  CHECK(result.errors[0].message == "users.app.password: environment variable MISSING_PASSWORD is not set");
  CHECK(result.errors[1].line == 7);
  CHECK(result.errors[1].message ==
        "services.app.server_password: environment variable EMPTY is set but empty");
}

TEST_CASE("a malformed ${...} reference is an error, not a literal", "[config][secrets]") {
  const Env env;
  for (const char* reference : {"${UNCLOSED", "${}", "${BAD-NAME}", "${1ABC}"}) {
    INFO(reference);
    const LoadResult result =
        load_from_string(config_with(std::string("{ password: \"") + reference + "\" }"), &env);
    REQUIRE(result.errors.size() == 1);
    CHECK(result.errors[0].line == 3);
    CHECK(contains(result.errors[0].message, "users.app.password: malformed environment reference"));
  }
}

TEST_CASE("file: reads the file and strips one trailing newline", "[config][secrets]") {
  const auto password_from = [](const std::string& content) {
    const TempFile file(content);
    const LoadResult result = load_from_string(config_with("{ password: \"file:" + file.path() + "\" }"));
    INFO(describe(result));
    REQUIRE(result.config);
    return *result.config->users.at("app").password;
  };
  CHECK(password_from("s3cret") == "s3cret");
  CHECK(password_from("s3cret\n") == "s3cret");
  CHECK(password_from("s3cret\r\n") == "s3cret");
  CHECK(password_from("s3cret\n\n") == "s3cret\n");
  CHECK(password_from(" spaced out ") == " spaced out ");
}

TEST_CASE("a scram verifier can come from a file too", "[config][secrets]") {
  const TempFile file(
      "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$Y7KMtnzzL+zDqi0RtBNdAPJekq+PCg4eCcAMKDtLILQ=:"
      "c1MMj1kLUJb96FIM7IjzQUXiW2pIi8LDbQl55vL1oRo=\n");
  const LoadResult result = load_from_string(config_with("{ scram_verifier: \"file:" + file.path() + "\" }"));
  INFO(describe(result));
  REQUIRE(result.config);
  CHECK(result.config->users.at("app").scram_verifier->ends_with("vL1oRo="));
}

TEST_CASE("an unreadable or empty secret file names the file and the line", "[config][secrets]") {
  SECTION("missing") {
    const LoadResult result =
        load_from_string(config_with("{ auth: md5, password: \"file:/nonexistent/pgsluice-secret\" }"));
    REQUIRE(result.errors.size() == 1);
    CHECK(result.errors[0].line == 3);
    CHECK(result.errors[0].message ==
          "users.app.password: cannot read secret file /nonexistent/pgsluice-secret: No such file or "
          "directory");
  }
  SECTION("a directory") {
    const LoadResult result = load_from_string(config_with("{ password: \"file:/\" }"));
    REQUIRE(result.errors.size() == 1);
    CHECK(result.errors[0].message == "users.app.password: cannot read secret file /: Is a directory");
  }
  SECTION("empty") {
    const TempFile file("\n");
    const LoadResult result = load_from_string(config_with("{ password: \"file:" + file.path() + "\" }"));
    REQUIRE(result.errors.size() == 1);
    CHECK(result.errors[0].message == "users.app.password: secret file " + file.path() + " is empty");
  }
  SECTION("no path") {
    const LoadResult result = load_from_string(config_with(R"({ password: "file:" })"));
    REQUIRE(result.errors.size() == 1);
    CHECK(contains(result.errors[0].message, "file: reference without a path"));
  }
}

TEST_CASE("a literal password is used as written", "[config][secrets]") {
  const LoadResult result = load_from_string(config_with(R"({ password: "plain $ secret {}" })"));
  REQUIRE(result.config);
  CHECK(result.config->users.at("app").password == "plain $ secret {}");
}

TEST_CASE("no error message ever contains a secret", "[config][secrets]") {
  const std::string secret = "Hunter2-S3cret-Value";
  const TempFile file(secret + "\n");
  const Env env{{"SECRET", secret}};
  const std::vector<std::string> bad_configs = {
      // Resolved secrets in the wrong shape or combination.
      config_with(R"({ scram_verifier: "${SECRET}" })"),
      config_with(R"({ auth: md5, md5_hash: "${SECRET}" })"),
      config_with("{ scram_verifier: \"file:" + file.path() + "\" }"),
      config_with(R"({ password: "${SECRET}", scram_verifier: "${SECRET}" })"),
      config_with(R"({ auth: trust, password: "${SECRET}" })"),
      // Literal secrets in the wrong shape or combination.
      config_with("{ scram_verifier: \"SCRAM-SHA-256$" + secret + "\" }"),
      config_with("{ auth: md5, md5_hash: \"md5" + secret + "\" }"),
      config_with("{ password: \"" + secret + "\", md5_hash: \"" + secret + "\" }"),
      config_with("{ auth: trust, password: \"" + secret + "\" }"),
      config_with("{ password: [" + secret + "] }"),
      config_with("{ password: { " + secret + ": x } }"),
      config_with("{ password: \"${" + secret + "\" }"),
      // A secret next to other errors in the same service.
      config_with(R"({ password: "${SECRET}" })", "server_password: " + secret + "\n    max_connections: x"),
  };
  for (const auto& text : bad_configs) {
    const LoadResult result = load_from_string(text, &env);
    INFO(text);
    INFO(describe(result));
    REQUIRE_FALSE(result.errors.empty());
    for (const auto& error : result.errors)
      CHECK_FALSE(contains(error.message, secret));
  }
}
