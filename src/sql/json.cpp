// Boost.JSON compiled into this library (header-only mode: one translation unit includes its source),
// for reading libpg_query's parse trees.
#include <boost/json/src.hpp>
