//! Docstring examples -> test cases. (filled below)
use super::FunctionInfo;
use crate::types::TestCase;

/// Test cases from the docstring's examples.
pub fn extract_examples(_func: &FunctionInfo) -> Vec<TestCase> {
    Vec::new()
}
