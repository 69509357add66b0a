//! The one scanner for the quotes and brackets of a Python snippet (a call,
//! an expected value, a docstring line) that need not parse: where each
//! character stands, inside a string literal or at which bracket depth.
//! Whole modules are parsed with tree-sitter instead.
//!
//! Knows single- and double-quoted literals with backslash escapes (a
//! triple-quoted literal reads as three adjacent ones, which comes to the
//! same) and the brackets `()`, `[]`, `{}`. Not comments, not raw strings'
//! escapes.

/// Where a character of a snippet stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// Outside string literals, at this bracket depth, 0 at the top level. A
    /// bracket stands at the depth outside it (in `f(x)`, `(` and `)` at 0,
    /// `x` at 1); below 0 once more brackets closed than opened.
    Code(i32),
    /// A quote that opens or closes a string literal.
    Quote,
    /// Inside a string literal, backslash escapes included.
    Str,
}

/// Each character of `s` with its byte offset and where it stands.
pub fn scan(s: &str) -> impl Iterator<Item = (usize, char, At)> + '_ {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    s.char_indices().map(move |(i, c)| {
        let at = match quote {
            Some(_) if escaped => {
                escaped = false;
                At::Str
            }
            Some(_) if c == '\\' => {
                escaped = true;
                At::Str
            }
            Some(q) if c == q => {
                quote = None;
                At::Quote
            }
            Some(_) => At::Str,
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    At::Quote
                }
                '(' | '[' | '{' => {
                    depth += 1;
                    At::Code(depth - 1)
                }
                ')' | ']' | '}' => {
                    depth -= 1;
                    At::Code(depth)
                }
                _ => At::Code(depth),
            },
        };
        (i, c, at)
    })
}

/// Whether `c` is one of the brackets [`scan`] counts.
pub fn is_bracket(c: char) -> bool {
    matches!(c, '(' | ')' | '[' | ']' | '{' | '}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(s: &str) -> Vec<At> {
        scan(s).map(|(_, _, at)| at).collect()
    }

    #[test]
    fn brackets_stand_at_the_depth_outside_them() {
        use At::Code as C;
        assert_eq!(
            places("f(x[1])"),
            [C(0), C(0), C(1), C(1), C(2), C(1), C(0)]
        );
        assert_eq!(places("{a}"), [C(0), C(1), C(0)]);
        assert_eq!(places(")x"), [C(-1), C(-1)], "a stray closer goes below 0");
    }

    #[test]
    fn brackets_and_the_other_quote_inside_a_literal_do_not_count() {
        use At::{Code as C, Quote as Q, Str as S};
        assert_eq!(places("'(\"'x"), [Q, S, S, Q, C(0)]);
        assert_eq!(places("\"it's\")"), [Q, S, S, S, S, Q, C(-1)]);
    }

    #[test]
    fn an_escaped_quote_does_not_close_the_literal() {
        use At::{Code as C, Quote as Q, Str as S};
        assert_eq!(places(r"'a\'b'c"), [Q, S, S, S, S, Q, C(0)]);
        // An escaped backslash does not escape the quote after it.
        assert_eq!(places(r"'\\'x"), [Q, S, S, Q, C(0)]);
    }

    #[test]
    fn triple_quotes_read_as_adjacent_literals() {
        let s = "'''a(b'''c";
        let at: Vec<(char, At)> = scan(s).map(|(_, c, at)| (c, at)).collect();
        assert_eq!(at[4], ('(', At::Str));
        assert_eq!(at.last(), Some(&('c', At::Code(0))));
    }

    #[test]
    fn an_unclosed_literal_runs_to_the_end() {
        assert_eq!(places("'a)"), [At::Quote, At::Str, At::Str]);
    }

    #[test]
    fn offsets_are_bytes() {
        let s = "f('é', [1])";
        let close = scan(s)
            .find(|&(_, c, at)| c == ']' && at == At::Code(1))
            .map(|(i, ..)| i);
        assert_eq!(close, Some(s.find(']').unwrap()));
        assert!(is_bracket(']') && !is_bracket('<'));
    }
}
