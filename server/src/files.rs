//! Reading and writing the user's Python file as the CLI does: in the
//! encoding its PEP 263 declaration names, and written back atomically
//! through a symlink, with the file's permissions, only if it is unchanged.
//!
//! Owns: finding and naming a source file's encoding, decoding and encoding
//! it, and the write (temp file beside the link's target, then rename). Must
//! not know about the pipeline, the configuration or any front end; line
//! endings are `python::splice`'s business (it keeps the file's own).

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use encoding_rs::Encoding;

/// Why a source file could not be read or written. Messages name the file,
/// the cause and what to do.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} declares `coding: {label}` (PEP 263), an encoding docsmith cannot read and write: use utf-8, latin-1 or another single- or multi-byte encoding Python and the WHATWG standard both know")]
    UnknownEncoding { path: PathBuf, label: String },
    #[error("{path} is not valid {encoding} (line {line}); fix the bytes, or declare the file's real encoding in a `# -*- coding: NAME -*-` line (PEP 263)")]
    Undecodable {
        path: PathBuf,
        encoding: String,
        /// 1-based.
        line: usize,
    },
    #[error("the new text of {path} cannot be written in its encoding, {encoding}: {ch:?} (U+{code:04X}) on line {line} has no {encoding} byte; nothing written. Change that character (or the file's `coding:` line) and run docsmith again")]
    Unencodable {
        path: PathBuf,
        encoding: String,
        ch: char,
        code: u32,
        /// 1-based line of the new text.
        line: usize,
    },
    #[error("{path} changed since docsmith read it; nothing written (re-run `docsmith generate` on the current text)")]
    Changed { path: PathBuf },
    #[error("cannot write {path}: {source}; nothing written")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A source file's encoding, from its PEP 263 declaration (UTF-8 without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceEncoding {
    /// No declaration, or `utf-8` (any `utf-8-*` spelling).
    Utf8,
    /// ISO-8859-1 proper (every byte is the code point of the same number),
    /// which Python's `latin-1` is; WHATWG maps the label to windows-1252.
    Latin1,
    /// 7-bit ASCII: any other byte or character is an error.
    Ascii,
    /// Any other encoding `encoding_rs` can both decode and encode.
    Other(&'static Encoding),
}

impl SourceEncoding {
    /// The encoding named by a PEP 263 label (Python's spellings: `_` and `-`
    /// are alike, case does not matter). `None` when docsmith cannot write it
    /// (UTF-16 and the like, or unknown).
    pub fn from_label(label: &str) -> Option<SourceEncoding> {
        let l = label.trim().to_ascii_lowercase().replace('_', "-");
        // Python's own normalisation: `utf-8-*` is utf-8, `latin-1-*` latin-1.
        if l == "utf-8" || l == "utf8" || l.starts_with("utf-8-") {
            return Some(SourceEncoding::Utf8);
        }
        let latin1 = [
            "latin-1",
            "latin1",
            "iso-8859-1",
            "iso8859-1",
            "iso-latin-1",
            "8859",
            "cp819",
            "l1",
            "iso-ir-100",
            "csisolatin1",
        ];
        if latin1.contains(&l.as_str())
            || ["latin-1-", "iso-8859-1-", "iso-latin-1-"]
                .iter()
                .any(|p| l.starts_with(p))
        {
            return Some(SourceEncoding::Latin1);
        }
        if matches!(l.as_str(), "ascii" | "us-ascii" | "646") {
            return Some(SourceEncoding::Ascii);
        }
        let enc = Encoding::for_label(l.as_bytes())
            .or_else(|| Encoding::for_label(label.trim().as_bytes()))?;
        // UTF-16 and `replacement` decode but encode as something else.
        (enc.output_encoding() == enc).then_some(SourceEncoding::Other(enc))
    }

    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            SourceEncoding::Utf8 => "utf-8",
            SourceEncoding::Latin1 => "latin-1",
            SourceEncoding::Ascii => "ascii",
            SourceEncoding::Other(e) => e.name(),
        }
    }

    /// Decodes `bytes`; `Err(byte offset)` of the first malformed sequence.
    fn decode(self, bytes: &[u8]) -> Result<String, usize> {
        match self {
            SourceEncoding::Utf8 => {
                String::from_utf8(bytes.to_vec()).map_err(|e| e.utf8_error().valid_up_to())
            }
            SourceEncoding::Latin1 => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
            SourceEncoding::Ascii => match bytes.iter().position(|b| !b.is_ascii()) {
                Some(i) => Err(i),
                None => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
            },
            SourceEncoding::Other(e) => e
                .decode_without_bom_handling_and_without_replacement(bytes)
                .map(Cow::into_owned)
                .ok_or_else(|| first_malformed(e, bytes)),
        }
    }

    /// Encodes `text`; `Err(char index)` of the first character the encoding has no bytes for.
    fn encode(self, text: &str) -> Result<Vec<u8>, char> {
        let first_outside = |limit: u32| text.chars().find(|c| u32::from(*c) > limit);
        match self {
            SourceEncoding::Utf8 => Ok(text.as_bytes().to_vec()),
            SourceEncoding::Latin1 => match first_outside(0xFF) {
                Some(c) => Err(c),
                None => Ok(text.chars().map(|c| u32::from(c) as u8).collect()),
            },
            SourceEncoding::Ascii => match first_outside(0x7F) {
                Some(c) => Err(c),
                None => Ok(text.as_bytes().to_vec()),
            },
            SourceEncoding::Other(e) => {
                let (bytes, _, unmappable) = e.encode(text);
                if !unmappable {
                    return Ok(bytes.into_owned());
                }
                let mut buf = [0u8; 4];
                let bad = text
                    .chars()
                    .find(|c| e.encode(c.encode_utf8(&mut buf)).2)
                    .unwrap_or('\u{FFFD}');
                Err(bad)
            }
        }
    }
}

/// The byte offset of the first malformed sequence (for the message's line).
fn first_malformed(e: &'static Encoding, bytes: &[u8]) -> usize {
    let mut decoder = e.new_decoder_without_bom_handling();
    let mut out = String::with_capacity(bytes.len() * 3 + 16);
    let (result, read) = decoder.decode_to_string_without_replacement(bytes, &mut out, true);
    match result {
        // `len` bad bytes, then `after` bytes read past them.
        encoding_rs::DecoderResult::Malformed(len, after) => {
            read.saturating_sub(usize::from(len) + usize::from(after))
        }
        _ => read,
    }
}

/// A source file as read: its bytes, its encoding and its decoded text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as the user named it (a symlink stays a symlink).
    pub path: PathBuf,
    /// What the file is decoded from and written back in.
    pub encoding: SourceEncoding,
    /// The decoded text.
    pub text: String,
    /// The bytes read, for the "unchanged since read" check.
    bytes: Vec<u8>,
}

/// Reads `path` (through a symlink) and decodes it in the encoding its PEP 263
/// declaration names (UTF-8 without one).
///
/// Errors: [`FileError::Read`], [`FileError::UnknownEncoding`],
/// [`FileError::Undecodable`] (with the line of the first bad byte).
pub fn read(path: &Path) -> Result<SourceFile, FileError> {
    let bytes = std::fs::read(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let encoding = match crate::python::coding_declaration(&bytes[..bytes.len().min(4096)]) {
        None => SourceEncoding::Utf8,
        Some((_, label)) => {
            SourceEncoding::from_label(&label).ok_or_else(|| FileError::UnknownEncoding {
                path: path.to_path_buf(),
                label,
            })?
        }
    };
    let text = encoding
        .decode(&bytes)
        .map_err(|at| FileError::Undecodable {
            path: path.to_path_buf(),
            encoding: encoding.name().to_string(),
            line: bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1,
        })?;
    Ok(SourceFile {
        path: path.to_path_buf(),
        encoding,
        text,
        bytes,
    })
}

impl SourceFile {
    /// Writes `new_text` in the file's encoding, only if the file still holds
    /// the bytes read. A symlink is written through: its target (resolved
    /// now) is replaced atomically by a temp file in the target's folder,
    /// renamed over it, with the target's permissions (and owner, where
    /// allowed); the link stays a link.
    ///
    /// Errors: [`FileError::Unencodable`] (checked first: nothing is
    /// written), [`FileError::Changed`] (or `Read` when it is gone),
    /// [`FileError::Write`].
    pub fn write_if_unchanged(&self, new_text: &str) -> Result<(), FileError> {
        let bytes = self.encoding.encode(new_text).map_err(|ch| {
            let at = new_text.find(ch).unwrap_or(0);
            FileError::Unencodable {
                path: self.path.clone(),
                encoding: self.encoding.name().to_string(),
                ch,
                code: u32::from(ch),
                line: new_text[..at].matches('\n').count() + 1,
            }
        })?;
        let write_err = |source| FileError::Write {
            path: self.path.clone(),
            source,
        };
        let target = std::fs::canonicalize(&self.path).map_err(|source| FileError::Read {
            path: self.path.clone(),
            source,
        })?;
        let now = std::fs::read(&target).map_err(|source| FileError::Read {
            path: self.path.clone(),
            source,
        })?;
        if now != self.bytes {
            return Err(FileError::Changed {
                path: self.path.clone(),
            });
        }
        let dir = target.parent().unwrap_or(Path::new("/"));
        let meta = std::fs::metadata(&target).map_err(write_err)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".docsmith-")
            .tempfile_in(dir)
            .map_err(write_err)?;
        std::io::Write::write_all(&mut tmp, &bytes).map_err(write_err)?;
        tmp.as_file().sync_all().map_err(write_err)?;
        std::fs::set_permissions(tmp.path(), meta.permissions()).map_err(write_err)?;
        {
            use std::os::unix::fs::MetadataExt as _;
            // Only root may give a file away; a normal user's file is theirs already.
            let _ = std::os::unix::fs::chown(tmp.path(), Some(meta.uid()), Some(meta.gid()));
        }
        tmp.persist(&target).map_err(|e| write_err(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn labels_map_to_encodings_that_round_trip() {
        assert_eq!(
            SourceEncoding::from_label("UTF_8"),
            Some(SourceEncoding::Utf8)
        );
        assert_eq!(
            SourceEncoding::from_label("latin-1"),
            Some(SourceEncoding::Latin1)
        );
        assert_eq!(
            SourceEncoding::from_label("ISO-8859-1"),
            Some(SourceEncoding::Latin1)
        );
        assert_eq!(
            SourceEncoding::from_label("ascii"),
            Some(SourceEncoding::Ascii)
        );
        assert_eq!(
            SourceEncoding::from_label("cp1252").map(SourceEncoding::name),
            Some("windows-1252")
        );
        assert_eq!(
            SourceEncoding::from_label("shift_jis").map(SourceEncoding::name),
            Some("Shift_JIS")
        );
        assert_eq!(SourceEncoding::from_label("utf-16"), None);
        assert_eq!(SourceEncoding::from_label("klingon"), None);
        // Latin-1 is ISO-8859-1 proper: 0x80 is U+0080, not the euro sign.
        let l1 = SourceEncoding::Latin1;
        assert_eq!(l1.decode(&[0x80, 0xE9]).unwrap(), "\u{80}é");
        assert_eq!(l1.encode("\u{80}é").unwrap(), vec![0x80, 0xE9]);
        assert_eq!(l1.encode("é☃"), Err('☃'));
        assert_eq!(SourceEncoding::Ascii.decode(b"ab\xe9"), Err(2));
        let sj = SourceEncoding::from_label("shift_jis").unwrap();
        let bytes = sj.encode("日本").unwrap();
        assert_eq!(sj.decode(&bytes).unwrap(), "日本");
        assert_eq!(sj.encode("日☃"), Err('☃'));
    }

    #[test]
    fn a_latin1_file_is_read_and_written_in_latin1() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.py");
        std::fs::write(&f, b"# -*- coding: latin-1 -*-\nS = '\xc7a'\n").unwrap();
        let src = read(&f).unwrap();
        assert_eq!(src.encoding, SourceEncoding::Latin1);
        assert_eq!(src.text, "# -*- coding: latin-1 -*-\nS = 'Ça'\n");
        src.write_if_unchanged("# -*- coding: latin-1 -*-\nS = 'Ça va'\n")
            .unwrap();
        assert_eq!(
            std::fs::read(&f).unwrap(),
            b"# -*- coding: latin-1 -*-\nS = '\xc7a va'\n"
        );
        let before = std::fs::read(&f).unwrap();
        let src = read(&f).unwrap();
        let e = src
            .write_if_unchanged("# -*- coding: latin-1 -*-\nS = 'Ça'\nT = '☃'\n")
            .unwrap_err();
        assert!(
            matches!(
                e,
                FileError::Unencodable {
                    ch: '☃',
                    line: 3,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("latin-1"), "{e}");
        assert_eq!(std::fs::read(&f).unwrap(), before, "nothing written");
    }

    #[test]
    fn undecodable_and_unknown_encodings_are_refused_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.py");
        std::fs::write(&f, b"x = 1\ny = '\xff'\n").unwrap();
        let e = read(&f).unwrap_err();
        assert!(matches!(e, FileError::Undecodable { line: 2, .. }), "{e:?}");
        std::fs::write(&f, b"# coding: klingon\n").unwrap();
        let e = read(&f).unwrap_err();
        assert!(e.to_string().contains("klingon"), "{e}");
    }

    #[test]
    fn a_changed_file_is_not_written_and_an_unchanged_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.py");
        std::fs::write(&f, "old\n").unwrap();
        let src = read(&f).unwrap();
        std::fs::write(&f, "other\n").unwrap();
        assert!(matches!(
            src.write_if_unchanged("new\n"),
            Err(FileError::Changed { .. })
        ));
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "other\n");
        let src = read(&f).unwrap();
        src.write_if_unchanged("new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "new\n");
    }

    #[test]
    fn a_symlink_is_written_through_and_kept_with_the_targets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let real_dir = dir.path().join("real");
        std::fs::create_dir(&real_dir).unwrap();
        let target = real_dir.join("m.py");
        std::fs::write(&target, "old\n").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("link.py");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let src = read(&link).unwrap();
        src.write_if_unchanged("new\n").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new\n");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let leftovers: Vec<_> = std::fs::read_dir(&real_dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }
}
