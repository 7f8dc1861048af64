// Catch2 v2 single-header main for the unit tests.
#define CATCH_CONFIG_MAIN
#include <catch.hpp>
