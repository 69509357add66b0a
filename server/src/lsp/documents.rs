//! Open documents: a ropey rope per document (the text of record), a
//! tree-sitter tree updated incrementally on every change, and conversions
//! between LSP positions (in the negotiated encoding) and byte offsets.
//!
//! Owns: applying `didOpen` / `didChange` (full and incremental) and position
//! arithmetic. Must not know about tasks, commands or the pipeline.
//!
//! Lines are split on `\n`, `\r\n` and `\r`, as LSP 3.17 defines them (ropey's
//! `cr_lines` feature, without its Unicode line breaks). Points given to
//! tree-sitter use the rope's line numbers, which agree with tree-sitter's
//! rows except in files that use a lone `\r` as line break.

use std::sync::{Arc, OnceLock};

use ropey::{Rope, RopeSlice};
use tower_lsp_server::ls_types::{
    Position, PositionEncodingKind, Range, TextDocumentContentChangeEvent,
};
use tree_sitter::{InputEdit, Point, Tree};

/// How `Position.character` counts: LSP 3.17 `positionEncoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Bytes of UTF-8 (`utf-8`).
    Utf8,
    /// UTF-16 code units (`utf-16`, the protocol's default).
    Utf16,
    /// Unicode scalar values (`utf-32`).
    Utf32,
}

impl Encoding {
    /// Picks the encoding from the client's `general.positionEncodings`: UTF-8
    /// when offered (no conversion for tree-sitter's byte offsets), else UTF-32
    /// when offered, else UTF-16, which every client must support.
    pub fn negotiate(offered: Option<&[PositionEncodingKind]>) -> Encoding {
        let offered = offered.unwrap_or(&[]);
        if offered.contains(&PositionEncodingKind::UTF8) {
            Encoding::Utf8
        } else if offered.contains(&PositionEncodingKind::UTF32) {
            Encoding::Utf32
        } else {
            Encoding::Utf16
        }
    }

    /// The value announced in `ServerCapabilities.positionEncoding`.
    pub fn kind(self) -> PositionEncodingKind {
        match self {
            Encoding::Utf8 => PositionEncodingKind::UTF8,
            Encoding::Utf16 => PositionEncodingKind::UTF16,
            Encoding::Utf32 => PositionEncodingKind::UTF32,
        }
    }
}

/// One open text document.
pub struct Document {
    /// The version the client gave with the last `didOpen` / `didChange`.
    pub version: i32,
    /// The client's `languageId` (`python` for the documents docsmith acts on).
    pub language_id: String,
    rope: Rope,
    tree: Tree,
    /// The text as one string, built on first use after each change (analysis
    /// needs contiguous `&str`; building it costs one copy of the file).
    text: OnceLock<Arc<str>>,
}

impl Document {
    /// A document as opened by the client.
    pub fn new(version: i32, language_id: &str, text: &str) -> Document {
        let rope = Rope::from_str(text);
        let tree = parse_rope(&rope, None);
        Document {
            version,
            language_id: language_id.to_string(),
            rope,
            tree,
            text: OnceLock::new(),
        }
    }

    /// Applies the changes of one `didChange` in order, edits the syntax tree for
    /// each, then re-parses once, reusing the unchanged parts of the old tree.
    /// Ranges outside the document are clamped to it (a misbehaving client
    /// cannot make the server panic).
    pub fn apply_changes(
        &mut self,
        version: i32,
        changes: Vec<TextDocumentContentChangeEvent>,
        enc: Encoding,
    ) {
        let mut full = false;
        for change in changes {
            match change.range {
                None => {
                    self.rope = Rope::from_str(&change.text);
                    full = true;
                }
                Some(range) => {
                    let start = self.position_to_byte(range.start, enc);
                    let end = self.position_to_byte(range.end, enc).max(start);
                    let start_position = self.point(start);
                    let old_end_position = self.point(end);
                    let sc = self.rope.byte_to_char(start);
                    let ec = self.rope.byte_to_char(end);
                    self.rope.remove(sc..ec);
                    self.rope.insert(sc, &change.text);
                    let new_end = start + change.text.len();
                    if !full {
                        self.tree.edit(&InputEdit {
                            start_byte: start,
                            old_end_byte: end,
                            new_end_byte: new_end,
                            start_position,
                            old_end_position,
                            new_end_position: self.point(new_end),
                        });
                    }
                }
            }
        }
        self.tree = if full {
            parse_rope(&self.rope, None)
        } else {
            parse_rope(&self.rope, Some(&self.tree))
        };
        self.version = version;
        self.text = OnceLock::new();
    }

    /// The whole text (shared; cheap to clone).
    pub fn text(&self) -> Arc<str> {
        self.text
            .get_or_init(|| Arc::from(self.rope.to_string()))
            .clone()
    }

    /// The current syntax tree (matches [`Document::text`]).
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Number of lines (a final line without a line break counts; an empty
    /// document has one line).
    pub fn len_lines(&self) -> usize {
        self.rope.len_lines()
    }

    /// Byte offset of the start of 0-based `line` (the end of the text past the last line).
    pub fn line_start_byte(&self, line: usize) -> usize {
        if line >= self.rope.len_lines() {
            self.rope.len_bytes()
        } else {
            self.rope.line_to_byte(line)
        }
    }

    /// Byte offset of an LSP position. A line past the end gives the end of the
    /// text; a character past the end of its line gives the end of the line
    /// (before its line break), as LSP 3.17 asks; a UTF-8 offset inside a
    /// character is rounded down to the character's start.
    pub fn position_to_byte(&self, p: Position, enc: Encoding) -> usize {
        let line = p.line as usize;
        if line >= self.rope.len_lines() {
            return self.rope.len_bytes();
        }
        let start = self.rope.line_to_byte(line);
        let slice = self.rope.line(line);
        let content_chars = slice.len_chars() - line_break_chars(slice);
        let ch = p.character as usize;
        let char_in_line = match enc {
            Encoding::Utf8 => slice.byte_to_char(ch.min(slice.len_bytes())),
            Encoding::Utf16 => slice.utf16_cu_to_char(ch.min(slice.len_utf16_cu())),
            Encoding::Utf32 => ch,
        }
        .min(content_chars);
        start + slice.char_to_byte(char_in_line)
    }

    /// The LSP position of a byte offset (clamped to the text; an offset inside a
    /// character is rounded down to the character's start).
    pub fn byte_to_position(&self, byte: usize, enc: Encoding) -> Position {
        let byte = byte.min(self.rope.len_bytes());
        let line = self.rope.byte_to_line(byte);
        let slice = self.rope.line(line);
        let col_bytes = byte - self.rope.line_to_byte(line);
        let col_char = slice.byte_to_char(col_bytes);
        let character = match enc {
            Encoding::Utf8 => slice.char_to_byte(col_char),
            Encoding::Utf16 => slice.char_to_utf16_cu(col_char),
            Encoding::Utf32 => col_char,
        };
        Position::new(line as u32, character as u32)
    }

    /// The LSP range of a byte range.
    pub fn range(&self, bytes: std::ops::Range<usize>, enc: Encoding) -> Range {
        Range::new(
            self.byte_to_position(bytes.start, enc),
            self.byte_to_position(bytes.end, enc),
        )
    }

    fn point(&self, byte: usize) -> Point {
        let line = self.rope.byte_to_line(byte);
        Point::new(line, byte - self.rope.line_to_byte(line))
    }
}

/// Chars of the line break ending `line` (0, 1 or 2).
fn line_break_chars(line: RopeSlice) -> usize {
    let n = line.len_chars();
    if n == 0 {
        return 0;
    }
    match line.char(n - 1) {
        '\n' if n >= 2 && line.char(n - 2) == '\r' => 2,
        '\n' | '\r' => 1,
        _ => 0,
    }
}

/// Parses the rope chunk by chunk (no contiguous copy), reusing `old` when given.
fn parse_rope(rope: &Rope, old: Option<&Tree>) -> Tree {
    let mut parser = crate::python::new_parser();
    let len = rope.len_bytes();
    let mut read = |byte: usize, _: Point| -> &[u8] {
        if byte >= len {
            return &[];
        }
        let (chunk, chunk_start, _, _) = rope.chunk_at_byte(byte);
        &chunk.as_bytes()[byte - chunk_start..]
    };
    parser
        .parse_with_options(&mut read, old, None)
        .expect("a parser with a language and no cancellation always returns a tree")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(
        range: Option<((u32, u32), (u32, u32))>,
        text: &str,
    ) -> TextDocumentContentChangeEvent {
        TextDocumentContentChangeEvent {
            range: range
                .map(|((a, b), (c, d))| Range::new(Position::new(a, b), Position::new(c, d))),
            range_length: None,
            text: text.to_string(),
        }
    }

    #[test]
    fn negotiation_prefers_utf8_then_utf32_then_defaults_to_utf16() {
        use PositionEncodingKind as K;
        assert_eq!(Encoding::negotiate(None), Encoding::Utf16);
        assert_eq!(
            Encoding::negotiate(Some(&[K::UTF16, K::UTF8])),
            Encoding::Utf8
        );
        assert_eq!(
            Encoding::negotiate(Some(&[K::UTF32, K::UTF16])),
            Encoding::Utf32
        );
        assert_eq!(Encoding::negotiate(Some(&[K::UTF16])), Encoding::Utf16);
    }

    #[test]
    fn positions_count_code_units_of_the_negotiated_encoding() {
        // 'é' is 2 bytes / 1 UTF-16 unit; '😀' is 4 bytes / 2 UTF-16 units / 1 scalar.
        let d = Document::new(1, "python", "s = 'é😀x'\nnext\n");
        let x = "s = 'é😀".len();
        assert_eq!(
            d.byte_to_position(x, Encoding::Utf8),
            Position::new(0, x as u32)
        );
        assert_eq!(d.byte_to_position(x, Encoding::Utf16), Position::new(0, 8));
        assert_eq!(d.byte_to_position(x, Encoding::Utf32), Position::new(0, 7));
        for enc in [Encoding::Utf8, Encoding::Utf16, Encoding::Utf32] {
            let p = d.byte_to_position(x, enc);
            assert_eq!(d.position_to_byte(p, enc), x, "{enc:?}");
        }
        // Past the end of a line: the end of that line, before the break.
        assert_eq!(
            d.position_to_byte(Position::new(0, 99), Encoding::Utf16),
            "s = 'é😀x'".len()
        );
        // Past the last line: the end of the text.
        assert_eq!(
            d.position_to_byte(Position::new(9, 0), Encoding::Utf16),
            d.text().len()
        );
        // Inside a surrogate pair or a UTF-8 sequence: rounded down.
        assert_eq!(
            d.position_to_byte(Position::new(0, 7), Encoding::Utf16),
            "s = 'é".len()
        );
        assert_eq!(
            d.position_to_byte(Position::new(0, 6), Encoding::Utf8),
            "s = '".len()
        );
    }

    #[test]
    fn incremental_edits_with_emoji_match_a_fresh_parse() {
        let mut d = Document::new(1, "python", "def f():\n    \"\"\"Doc 😀.\"\"\"\n    ...\n");
        // Replace `...` (line 2, UTF-16 col 4..7) with a return that holds an emoji.
        d.apply_changes(
            2,
            vec![change(Some(((2, 4), (2, 7))), "return '🎉é'")],
            Encoding::Utf16,
        );
        // Insert a parameter after the emoji line was edited.
        d.apply_changes(
            3,
            vec![change(Some(((0, 6), (0, 6))), "x")],
            Encoding::Utf16,
        );
        // Two changes in one notification, applied in order.
        d.apply_changes(
            4,
            vec![
                change(Some(((2, 16), (2, 16))), " + x"),
                change(Some(((3, 0), (3, 0))), "\ndef g():\n    return 1\n"),
            ],
            Encoding::Utf16,
        );
        let want =
            "def f(x):\n    \"\"\"Doc 😀.\"\"\"\n    return '🎉é' + x\n\ndef g():\n    return 1\n";
        assert_eq!(&*d.text(), want);
        assert_eq!(d.version, 4);
        let fresh = Document::new(0, "python", want);
        assert_eq!(
            d.tree().root_node().to_sexp(),
            fresh.tree().root_node().to_sexp()
        );
        let names: Vec<_> = crate::python::functions_in_tree(d.tree(), &d.text())
            .into_iter()
            .map(|f| (f.name, f.start_line))
            .collect();
        assert_eq!(names, vec![("f".to_string(), 0), ("g".to_string(), 4)]);
    }

    #[test]
    fn crlf_and_full_replacement() {
        let mut d = Document::new(1, "python", "a = 1\r\nb = 2\r\n");
        assert_eq!(d.line_start_byte(1), 7);
        assert_eq!(d.position_to_byte(Position::new(0, 50), Encoding::Utf16), 5);
        d.apply_changes(
            2,
            vec![change(Some(((1, 4), (1, 5))), "3")],
            Encoding::Utf16,
        );
        assert_eq!(&*d.text(), "a = 1\r\nb = 3\r\n");
        d.apply_changes(
            3,
            vec![change(None, "def h():\n    pass\n")],
            Encoding::Utf16,
        );
        assert_eq!(
            crate::python::functions_in_tree(d.tree(), &d.text())[0].name,
            "h"
        );
        // A range beyond the text is clamped, not a panic.
        d.apply_changes(
            4,
            vec![change(Some(((40, 2), (90, 0))), "#")],
            Encoding::Utf8,
        );
        assert!(d.text().ends_with("pass\n#"));
    }

    #[test]
    fn function_at_line_descends_from_the_line() {
        let src = "import os\n\n\ndef a():\n    \"\"\"A.\"\"\"\n\n    return 1\n\n\ndef b(x):\n    \"\"\"B.\"\"\"\n    ...\n";
        let d = Document::new(1, "python", src);
        let text = d.text();
        let at = |l: usize| {
            crate::python::function_at_line_in_tree(d.tree(), &text, l, d.line_start_byte(l))
                .map(|f| f.name)
        };
        assert_eq!(at(0), None);
        assert_eq!(at(3).as_deref(), Some("a"));
        assert_eq!(at(5).as_deref(), Some("a"), "a blank line inside the body");
        assert_eq!(at(6).as_deref(), Some("a"));
        assert_eq!(at(8), None);
        assert_eq!(at(11).as_deref(), Some("b"));
    }
}
