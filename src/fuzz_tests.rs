//! Randomised input tests of the parsers (issue 5, fuzzing).
