//! The final stage of a Dockerfile, the part that says what the image is (USER, ENV, ENTRYPOINT,
//! CMD, LABEL, WORKDIR and the COPYs that fill it), so the e2e harness assembles its images from
//! the release's own Dockerfiles with [`crate::oci::ImageBuilder`] instead of from a second,
//! hand-written description that could drift from them.
//!
//! The reading follows BuildKit's (line continuations, comments, parser directives, heredocs,
//! quoting and `$VAR` expansion) with one deliberate difference: an ENTRYPOINT, CMD or COPY that
//! starts with `[` but is not a valid JSON array is an error, where docker would quietly run it as
//! a shell command. A final-stage instruction whose effect cannot be reproduced without a build
//! engine (RUN, ADD, …) is an error too, rather than an image that silently differs.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::oci::ImageBuilder;

/// What BuildKit puts in an image's environment when the base image sets no PATH.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// The stage after the last FROM, with every `$VAR` expanded as docker would without build args.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalStage {
    /// The image after FROM, e.g. `scratch`. Its layers and config are not part of what
    /// [`apply_final_stage`] builds: a caller decides whether an empty base will do.
    pub base: String,
    /// The stage's `AS` name.
    pub name: Option<String>,
    /// The stage's ARGs that have a value: their default or the global ARG's.
    pub args: BTreeMap<String, String>,
    pub user: Option<String>,
    /// The stage's ENV, in order, each name once (a later ENV replaces the value in place).
    pub env: Vec<(String, String)>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    /// Absolute.
    pub working_dir: Option<String>,
    pub copies: Vec<Copy>,
}

/// One COPY of the final stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    /// 1-based line of the instruction in the Dockerfile.
    pub line: usize,
    /// The instruction on one line, for the image history.
    pub instruction: String,
    /// `--from`: a stage name, a stage index or an image.
    pub from: Option<String>,
    /// `--chown` as `(uid, gid)`.
    pub chown: Option<(u32, u32)>,
    pub sources: Vec<String>,
    /// Absolute (relative to WORKDIR when written relative); a trailing `/` when it names a
    /// directory to copy into.
    pub destination: String,
}

/// Reads the Dockerfile at `path`; errors name it and the line.
pub fn final_stage(path: impl AsRef<Path>) -> Result<FinalStage> {
    let path = path.as_ref();
    let text = fs::read_to_string(path).context(|| format!("reading {}", path.display()))?;
    parse(&text).map_err(|e| Error::Image(format!("{} {e}", path.display())))
}

impl FinalStage {
    /// Dockerfile text; errors say `Dockerfile line N: …`.
    pub fn parse(text: &str) -> Result<Self> {
        parse(text).map_err(|e| Error::Image(format!("Dockerfile {e}")))
    }
}

/// Sets `image`'s config from the stage and adds one layer per COPY, in order: a directory that
/// `resolve` returns for a COPY is copied as a tree into the destination, a file as a file (to
/// `destination/basename` when the destination ends in `/`), modes as on disk, owned by `--chown`
/// or 0:0. `resolve` maps a COPY (its `from` and single source) to the local artifact.
///
/// The base image is not reproduced (see [`FinalStage::base`]), and missing parent directories are
/// `0755 0:0` where BuildKit would give the ones it creates to the `--chown` owner. On an error
/// `image` is left half-built; discard it.
pub fn apply_final_stage(
    stage: &FinalStage,
    image: &mut ImageBuilder,
    mut resolve: impl FnMut(&Copy) -> Result<PathBuf>,
) -> Result<()> {
    if let Some(user) = &stage.user {
        image.user(user);
    }
    // BuildKit adds the default PATH before the stage's ENV when the base has none.
    if !stage.env.iter().any(|(k, _)| k == "PATH") {
        image.env("PATH", DEFAULT_PATH);
    }
    for (key, value) in &stage.env {
        image.env(key, value);
    }
    if let Some(entrypoint) = &stage.entrypoint {
        image.entrypoint(entrypoint);
    }
    if let Some(cmd) = &stage.cmd {
        image.cmd(cmd);
    }
    if let Some(dir) = &stage.working_dir {
        image.working_dir(dir);
    }
    for (key, value) in &stage.labels {
        image.label(key, value);
    }

    for copy in &stage.copies {
        let fail =
            |why: String| Error::Image(format!("line {}: {}: {why}", copy.line, copy.instruction));
        let [source] = copy.sources.as_slice() else {
            return Err(fail(
                "one local artifact cannot stand for several sources".to_owned(),
            ));
        };
        if source.contains(['*', '?', '[']) {
            return Err(fail(
                "a wildcard source cannot be mapped to one local artifact".to_owned(),
            ));
        }
        let host = resolve(copy)?;
        let meta = fs::metadata(&host)
            .context(|| format!("{} (the artifact for line {})", host.display(), copy.line))?;
        let (uid, gid) = copy.chown.unwrap_or((0, 0));
        let layer = image.layer();
        layer.created_by(&copy.instruction);
        if meta.is_dir() {
            layer.tree(&host, &copy.destination, uid, gid);
        } else if meta.is_file() {
            let destination = if copy.destination.ends_with('/') {
                match source.trim_end_matches('/').rsplit('/').next() {
                    Some(name) if !matches!(name, "" | "." | "..") => {
                        format!("{}{name}", copy.destination)
                    }
                    _ => {
                        return Err(fail(format!(
                            "{} is a file, not a directory",
                            host.display()
                        )))
                    }
                }
            } else {
                copy.destination.clone()
            };
            layer.file(
                &host,
                &destination,
                meta.permissions().mode() & 0o7777,
                uid,
                gid,
            );
        } else {
            return Err(fail(format!(
                "{} is neither a file nor a directory",
                host.display()
            )));
        }
    }
    Ok(())
}

/// A parse error's message, starting with `line N:` where there is a line to point at.
type Parse<T> = std::result::Result<T, String>;

struct Instruction {
    line: usize,
    keyword: String,
    args: String,
    heredoc: bool,
}

fn parse(text: &str) -> Parse<FinalStage> {
    let (escape, instructions) = instructions(text)?;
    let mut global: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut last_from = None;
    for (i, ins) in instructions.iter().enumerate() {
        match ins.keyword.as_str() {
            "FROM" => last_from = Some(i),
            // Only ARGs before the first FROM are global; FROM lines may use them.
            "ARG" if last_from.is_none() => {
                let lookup = |name: &str| global.get(name).cloned().flatten();
                let declared = declare_args(&ins.args, escape, &lookup).map_err(|e| at(ins, e))?;
                global.extend(declared);
            }
            keyword if last_from.is_none() => {
                return Err(format!(
                    "line {}: {keyword} before the first FROM",
                    ins.line
                ))
            }
            _ => {}
        }
    }
    let Some(from) = last_from else {
        return Err("has no FROM instruction".to_owned());
    };

    let mut stage = Stage::new(&instructions[from], escape, global)?;
    for ins in &instructions[from + 1..] {
        stage.apply(ins).map_err(|e| at(ins, e))?;
    }
    Ok(stage.out)
}

fn at(ins: &Instruction, message: String) -> String {
    format!("line {}: {}: {message}", ins.line, ins.keyword)
}

/// Splits the text into instructions: directives read, comments and blank lines dropped, line
/// continuations joined, heredoc bodies skipped. Returns the escape character with them.
fn instructions(text: &str) -> Parse<(char, Vec<Instruction>)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut i = 0;
    // Parser directives count only before anything else; an unknown one is a comment and ends them.
    while let Some((key, value)) = lines.get(i).and_then(|line| directive(line)) {
        match key.as_str() {
            "escape" => {
                escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return Err(format!(
                            "line {}: the escape directive must be \\ or `, not {other}",
                            i + 1
                        ))
                    }
                }
            }
            "syntax" | "check" => {}
            _ => break,
        }
        i += 1;
    }

    let is_comment_or_blank = |line: &str| {
        let line = line.trim_start();
        line.is_empty() || line.starts_with('#')
    };
    let mut out = Vec::new();
    while i < lines.len() {
        if is_comment_or_blank(lines[i]) {
            i += 1;
            continue;
        }
        let line = i + 1;
        let mut joined = String::new();
        loop {
            let current = lines[i];
            i += 1;
            let Some(head) = current.trim_end().strip_suffix(escape) else {
                joined.push_str(current);
                break;
            };
            joined.push_str(head);
            // Inside a continuation, comment and blank lines are dropped, not ends.
            while i < lines.len() && is_comment_or_blank(lines[i]) {
                i += 1;
            }
            if i == lines.len() {
                break;
            }
        }

        let joined = joined.trim();
        let (keyword, args) = joined
            .split_once(char::is_whitespace)
            .map_or((joined, ""), |(k, a)| (k, a.trim()));
        let keyword = keyword.to_ascii_uppercase();
        if !INSTRUCTIONS.contains(&keyword.as_str()) {
            return Err(format!("line {line}: unknown instruction {keyword}"));
        }

        let mut heredoc = false;
        if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") {
            for (name, strip_tabs) in args.split_whitespace().filter_map(heredoc_marker) {
                heredoc = true;
                loop {
                    let Some(body) = lines.get(i) else {
                        return Err(format!("line {line}: heredoc <<{name} is never closed"));
                    };
                    i += 1;
                    let body = if strip_tabs {
                        body.trim_start_matches('\t')
                    } else {
                        body
                    };
                    if body == name {
                        break;
                    }
                }
            }
        }
        out.push(Instruction {
            line,
            keyword,
            args: args.to_owned(),
            heredoc,
        });
    }
    Ok((escape, out))
}

/// `# key=value` → (lowercase key, value).
fn directive(line: &str) -> Option<(String, &str)> {
    let (key, value) = line.trim_start().strip_prefix('#')?.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some((key.to_ascii_lowercase(), value.trim()))
}

/// `<<EOF`, `<<-EOF`, `<<"EOF"`, `2<<EOF` → (EOF, whether leading tabs are stripped).
fn heredoc_marker(word: &str) -> Option<(&str, bool)> {
    let word = word.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = word.strip_prefix("<<")?;
    let (rest, strip_tabs) = match rest.strip_prefix('-') {
        Some(rest) => (rest, true),
        None => (rest, false),
    };
    let name = ['"', '\'']
        .iter()
        .find_map(|&q| rest.strip_prefix(q)?.strip_suffix(q))
        .unwrap_or(rest);
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then_some((name, strip_tabs))
}

struct Stage {
    escape: char,
    shell: Vec<String>,
    global: BTreeMap<String, Option<String>>,
    out: FinalStage,
}

impl Stage {
    fn new(
        from: &Instruction,
        escape: char,
        global: BTreeMap<String, Option<String>>,
    ) -> Parse<Self> {
        let lookup = |name: &str| global.get(name).cloned().flatten();
        let words = raw_words(&from.args, escape)
            .and_then(|words| {
                words
                    .into_iter()
                    .filter(|(_, w)| !w.starts_with("--"))
                    .map(|(_, w)| process_word(w, escape, &lookup))
                    .collect::<Parse<Vec<_>>>()
            })
            .map_err(|e| at(from, e))?;
        let (base, name) = match words.as_slice() {
            [base] => (base.clone(), None),
            [base, as_, name] if as_.eq_ignore_ascii_case("as") => {
                (base.clone(), Some(name.clone()))
            }
            _ => {
                return Err(at(
                    from,
                    "expected `FROM [--platform=…] IMAGE [AS NAME]`".to_owned(),
                ))
            }
        };
        Ok(Self {
            escape,
            shell: vec!["/bin/sh".to_owned(), "-c".to_owned()],
            global,
            out: FinalStage {
                base,
                name,
                args: BTreeMap::new(),
                user: None,
                env: Vec::new(),
                entrypoint: None,
                cmd: None,
                labels: BTreeMap::new(),
                working_dir: None,
                copies: Vec::new(),
            },
        })
    }

    /// A variable as the stage sees it now: ENV wins over ARG.
    fn lookup(&self, name: &str) -> Option<String> {
        let env = self
            .out
            .env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone());
        env.or_else(|| self.out.args.get(name).cloned())
            .or_else(|| (name == "PATH").then(|| DEFAULT_PATH.to_owned()))
    }

    fn word(&self, raw: &str) -> Parse<String> {
        process_word(raw, self.escape, &|name| self.lookup(name))
    }

    fn apply(&mut self, ins: &Instruction) -> Parse<()> {
        let args = ins.args.as_str();
        match ins.keyword.as_str() {
            "ARG" => {
                let declared = declare_args(args, self.escape, &|name| self.lookup(name))?;
                for (name, value) in declared {
                    // Without a default of its own, an ARG takes the global one, if any.
                    if let Some(value) = value.or_else(|| self.global.get(&name).cloned().flatten())
                    {
                        self.out.args.insert(name, value);
                    }
                }
            }
            "ENV" => {
                // Every value sees the variables as they were before this line, as in docker.
                for (key, value) in self.key_values(args)? {
                    match self.out.env.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, v)) => *v = value,
                        None => self.out.env.push((key, value)),
                    }
                }
            }
            "LABEL" => {
                let labels = self.key_values(args)?;
                self.out.labels.extend(labels);
            }
            "USER" => {
                let user = self.word(args)?;
                if user.is_empty() {
                    return Err("needs a user".to_owned());
                }
                self.out.user = Some(user);
            }
            "WORKDIR" => {
                let dir = self.word(args)?;
                if dir.is_empty() {
                    return Err("needs a directory".to_owned());
                }
                let base = self.out.working_dir.as_deref().unwrap_or("/");
                self.out.working_dir = Some(absolute(base, &dir));
            }
            "ENTRYPOINT" => self.out.entrypoint = Some(self.command(args)?),
            "CMD" => self.out.cmd = Some(self.command(args)?),
            "SHELL" => {
                let shell = json_array(args)?;
                if shell.is_empty() {
                    return Err("needs at least the shell's path".to_owned());
                }
                self.shell = shell;
            }
            "COPY" => {
                let copy = self.copy(ins)?;
                self.out.copies.push(copy);
            }
            _ => {
                return Err(
                    "not supported in the final stage: the image assembled here would \
                            differ from the one docker builds"
                        .to_owned(),
                )
            }
        }
        Ok(())
    }

    /// ENV and LABEL: `K=V K2="v 2" …`, or the old `K the rest of the line`.
    fn key_values(&self, args: &str) -> Parse<Vec<(String, String)>> {
        let words = raw_words(args, self.escape)?;
        let Some(&(start, first)) = words.first() else {
            return Err("needs KEY=VALUE".to_owned());
        };
        if unquoted_eq(first, self.escape).is_none() {
            let rest = args[start + first.len()..].trim_start();
            if rest.is_empty() {
                return Err(format!("{first} has no value (KEY=VALUE or KEY VALUE)"));
            }
            return Ok(vec![(self.word(first)?, self.word(rest)?)]);
        }
        words
            .iter()
            .map(|&(_, word)| {
                let eq = unquoted_eq(word, self.escape)
                    .ok_or_else(|| format!("{word} is not KEY=VALUE"))?;
                let key = self.word(&word[..eq])?;
                if key.is_empty() {
                    return Err(format!("{word} has an empty key"));
                }
                Ok((key, self.word(&word[eq + 1..])?))
            })
            .collect()
    }

    /// The exec form as written, or the shell form run by the stage's SHELL.
    fn command(&self, args: &str) -> Parse<Vec<String>> {
        if args.starts_with('[') {
            return json_array(args);
        }
        if args.is_empty() {
            return Err("needs a command".to_owned());
        }
        let mut command = self.shell.clone();
        command.push(args.to_owned());
        Ok(command)
    }

    fn copy(&self, ins: &Instruction) -> Parse<Copy> {
        if ins.heredoc {
            return Err("a heredoc has no local artifact to map to".to_owned());
        }
        let args = ins.args.as_str();
        let words = raw_words(args, self.escape)?;
        let (mut from, mut chown) = (None, None);
        let mut rest = args.len();
        let mut plain = Vec::new();
        for &(start, word) in &words {
            let Some(flag) = word.strip_prefix("--").filter(|_| plain.is_empty()) else {
                rest = rest.min(start);
                plain.push(word);
                continue;
            };
            let (name, value) = flag.split_once('=').unwrap_or((flag, ""));
            match name {
                "from" => from = Some(self.word(value)?),
                "chown" => chown = Some(owner(&self.word(value)?)?),
                // Only how BuildKit caches the layer, not what is in it.
                "link" => {}
                _ => return Err(format!("--{name} is not supported")),
            }
        }
        if from.as_deref() == Some("") {
            return Err("--from needs a stage or an image".to_owned());
        }

        let mut paths = if args[rest..].starts_with('[') {
            json_array(&args[rest..])?
                .iter()
                .map(|p| self.word(p))
                .collect::<Parse<Vec<_>>>()?
        } else {
            plain
                .into_iter()
                .map(|p| self.word(p))
                .collect::<Parse<Vec<_>>>()?
        };
        if paths.len() < 2 || paths.iter().any(String::is_empty) {
            return Err("needs a source and a destination".to_owned());
        }
        let written = paths.pop().expect("two or more");
        let into_dir = written.ends_with('/') || written == "." || written.ends_with("/.");
        if paths.len() > 1 && !into_dir {
            return Err(format!(
                "with several sources, the destination {written} must end in /"
            ));
        }
        let mut destination = absolute(self.out.working_dir.as_deref().unwrap_or("/"), &written);
        if into_dir && destination != "/" {
            destination.push('/');
        }
        Ok(Copy {
            line: ins.line,
            instruction: format!(
                "COPY {}",
                args.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
            from,
            chown,
            sources: paths,
            destination,
        })
    }
}

/// `ARG A=1 B` → [(A, Some(1)), (B, None)].
fn declare_args(
    args: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Parse<Vec<(String, Option<String>)>> {
    let words = raw_words(args, escape)?;
    if words.is_empty() {
        return Err("needs a name".to_owned());
    }
    words
        .iter()
        .map(|&(_, word)| match unquoted_eq(word, escape) {
            Some(eq) => Ok((
                word[..eq].to_owned(),
                Some(process_word(&word[eq + 1..], escape, lookup)?),
            )),
            None => Ok((word.to_owned(), None)),
        })
        .collect()
}

/// `--chown=UID[:GID]`; names would need the image's /etc/passwd, which is not here to read.
fn owner(value: &str) -> Parse<(u32, u32)> {
    let id = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("--chown={value}: only numeric ids can be honoured here"))
    };
    match value.split_once(':') {
        Some((uid, gid)) => Ok((id(uid)?, id(gid)?)),
        None => {
            let uid = id(value)?;
            Ok((uid, uid))
        }
    }
}

fn json_array(text: &str) -> Parse<Vec<String>> {
    serde_json::from_str(text).map_err(|e| format!("{text} is not a JSON array of strings: {e}"))
}

/// `path` joined to `base` (absolute) and cleaned, as WORKDIR and COPY resolve it.
fn absolute(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{base}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Words as the Dockerfile lexer splits them, still quoted and escaped, with their byte offsets.
fn raw_words(text: &str, escape: char) -> Parse<Vec<(usize, &str)>> {
    let mut words = Vec::new();
    let mut start = None;
    let mut quote = None;
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some('"') if c == escape => {
                chars.next();
            }
            Some(_) => {}
            None if c.is_whitespace() => {
                if let Some(s) = start.take() {
                    words.push((s, &text[s..i]));
                }
            }
            None => {
                start.get_or_insert(i);
                if c == '"' || c == '\'' {
                    quote = Some(c);
                } else if c == escape {
                    chars.next();
                }
            }
        }
    }
    if let Some(q) = quote {
        return Err(format!("unterminated {q} quote"));
    }
    if let Some(s) = start {
        words.push((s, &text[s..]));
    }
    Ok(words)
}

/// Where the first `=` outside quotes is.
fn unquoted_eq(word: &str, escape: char) -> Option<usize> {
    let mut quote = None;
    let mut chars = word.char_indices();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some('"') if c == escape => {
                chars.next();
            }
            Some(_) => {}
            None if c == '=' => return Some(i),
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == escape => {
                chars.next();
            }
            None => {}
        }
    }
    None
}

/// Removes quotes and escapes and expands `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR-word}`,
/// `${VAR:+word}` and `${VAR+word}` (not inside single quotes); an unset variable is empty.
fn process_word(raw: &str, escape: char, lookup: &dyn Fn(&str) -> Option<String>) -> Parse<String> {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next() {
                    Some('\'') => break,
                    Some(c) => out.push(c),
                    None => return Err(format!("unterminated ' quote in {raw}")),
                }
            },
            '"' => loop {
                match chars.next() {
                    Some('"') => break,
                    // In double quotes only ", $ and the escape itself are escaped, as in sh.
                    Some(c) if c == escape => match chars.peek() {
                        Some(&n) if n == '"' || n == '$' || n == escape => {
                            out.push(n);
                            chars.next();
                        }
                        _ => out.push(c),
                    },
                    Some('$') => expand(&mut chars, raw, escape, lookup, &mut out)?,
                    Some(c) => out.push(c),
                    None => return Err(format!("unterminated \" quote in {raw}")),
                }
            },
            '$' => expand(&mut chars, raw, escape, lookup, &mut out)?,
            c if c == escape => out.push(chars.next().unwrap_or(c)),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// After a `$`: the variable's value, or the `$` itself when no name follows.
fn expand(
    chars: &mut std::iter::Peekable<std::str::Chars>,
    raw: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
) -> Parse<()> {
    let is_name = |c: &char| c.is_ascii_alphanumeric() || *c == '_';
    let mut name = String::new();
    if chars.next_if_eq(&'{').is_none() {
        while let Some(c) = chars.next_if(is_name) {
            name.push(c);
        }
        if name.is_empty() {
            out.push('$');
        } else if let Some(value) = lookup(&name) {
            out.push_str(&value);
        }
        return Ok(());
    }

    while let Some(c) = chars.next_if(is_name) {
        name.push(c);
    }
    let bad = || format!("bad substitution in {raw}");
    if name.is_empty() {
        return Err(bad());
    }
    let value = lookup(&name);
    let modifier = match chars.next() {
        Some('}') => {
            out.push_str(value.as_deref().unwrap_or(""));
            return Ok(());
        }
        Some(':') => match chars.next() {
            Some(m @ ('-' | '+')) => (m, true),
            _ => return Err(bad()),
        },
        Some(m @ ('-' | '+')) => (m, false),
        _ => return Err(bad()),
    };
    // The word runs to the matching brace; it may hold expansions of its own.
    let mut word = String::new();
    let mut depth = 0;
    loop {
        match chars.next() {
            Some('}') if depth == 0 => break,
            Some(c) => {
                depth += match c {
                    '{' => 1,
                    '}' => -1,
                    _ => 0,
                };
                word.push(c);
            }
            None => return Err(bad()),
        }
    }
    let set = match modifier.1 {
        true => value.as_deref().is_some_and(|v| !v.is_empty()),
        false => value.is_some(),
    };
    match (modifier.0, set) {
        ('-', true) => out.push_str(value.as_deref().unwrap_or("")),
        ('+', false) => {}
        _ => out.push_str(&process_word(&word, escape, lookup)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Entry, EntryKind, OciArchive};
    use std::os::unix::fs::symlink;

    fn images() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../images")
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|&s| s.to_owned()).collect()
    }

    /// (from, chown, sources, destination) of a COPY.
    type CopySummary<'a> = (Option<&'a str>, Option<(u32, u32)>, Vec<&'a str>, &'a str);

    fn copies(stage: &FinalStage) -> Vec<CopySummary<'_>> {
        stage
            .copies
            .iter()
            .map(|c| {
                let sources = c.sources.iter().map(String::as_str).collect();
                (c.from.as_deref(), c.chown, sources, c.destination.as_str())
            })
            .collect()
    }

    const SOURCE: (&str, &str) = (
        "org.opencontainers.image.source",
        "https://github.com/lumigo-rs/lumigo-operator",
    );
    const LICENSES: (&str, &str) = ("org.opencontainers.image.licenses", "Apache-2.0");

    #[test]
    fn reads_the_autotrace_dockerfile() {
        let stage = final_stage(images().join("autotrace.Dockerfile")).unwrap();
        assert_eq!(stage.base, "scratch");
        assert_eq!(stage.name, None);
        assert!(stage.args.is_empty(), "{:?}", stage.args);
        assert_eq!(stage.user.as_deref(), Some("65532:65532"));
        assert_eq!(
            stage.env,
            [("TARGET_DIRECTORY".to_owned(), "/target".to_owned())]
        );
        assert_eq!(
            stage.entrypoint,
            Some(strings(&[
                "/bin/busybox",
                "sh",
                "-c",
                "/bin/busybox rm -rf \"$TARGET_DIRECTORY\"/* && /bin/busybox cp -R /opt/lumigo/. \
                 \"$TARGET_DIRECTORY\"/ && echo \"lumigo: payload copied to $TARGET_DIRECTORY\"",
            ]))
        );
        assert_eq!(stage.cmd, None);
        assert_eq!(stage.working_dir, None);
        assert_eq!(
            stage.labels,
            map(&[
                SOURCE,
                (
                    "org.opencontainers.image.description",
                    "Lumigo autotrace: the injector and the Node.js, Python and Java tracers"
                ),
                LICENSES,
            ])
        );
        assert_eq!(
            copies(&stage),
            [
                (Some("copier"), None, vec!["/bin/busybox"], "/bin/busybox"),
                (
                    Some("payload"),
                    Some((0, 0)),
                    vec!["/out/opt/lumigo"],
                    "/opt/lumigo"
                ),
            ]
        );
        assert_eq!(
            stage.copies[1].instruction,
            "COPY --from=payload --chown=0:0 /out/opt/lumigo /opt/lumigo"
        );
    }

    #[test]
    fn reads_the_operator_dockerfile() {
        let stage = final_stage(images().join("operator.Dockerfile")).unwrap();
        assert_eq!(stage.base, "gcr.io/distroless/static-debian12:nonroot");
        assert_eq!(stage.user.as_deref(), Some("65532:65532"));
        assert!(stage.env.is_empty(), "{:?}", stage.env);
        assert_eq!(
            stage.entrypoint,
            Some(strings(&["/usr/local/bin/lumigo-operator"]))
        );
        assert_eq!(stage.cmd, Some(strings(&["run"])));
        assert_eq!(
            stage.labels,
            map(&[
                SOURCE,
                (
                    "org.opencontainers.image.description",
                    "Lumigo operator: zero-code tracing for Kubernetes workloads"
                ),
                LICENSES,
            ])
        );
        assert_eq!(
            copies(&stage),
            [
                (
                    Some("build"),
                    None,
                    vec!["/out/lumigo-operator"],
                    "/usr/local/bin/lumigo-operator"
                ),
                (
                    Some("build"),
                    None,
                    vec!["/out/lumigo-policy.wasm"],
                    "/usr/local/share/lumigo/lumigo-policy.wasm"
                ),
            ]
        );
    }

    #[test]
    fn follows_dockerfile_syntax() {
        let stage = FinalStage::parse(
            r#"# syntax=docker/dockerfile:1.7
# escape=\
ARG VERSION=1.2 \
    FLAVOUR
FROM --platform=$BUILDPLATFORM alpine:${VERSION} AS build
RUN <<EOF
echo this is not an instruction
EOF
RUN cat <<-'END' > /x
	COPY is not an instruction either
	END

FROM build AS final
ARG VERSION
ARG NAME=app \
    EMPTY
ENV HOME=/home/$NAME GREETING="hello world" \
    # a comment inside a continuation is dropped
    SELF=x$HOME
ENV LEGACY  two words  here
ENV PATH=/opt/bin:$PATH
ENV GREETING=hi
LABEL a=1 "b"="two words" \

      c='$NAME' d="${NAME}-${VERSION}" e=${MISSING:-fallback} f=${NAME:+set} g=${MISSING:+unset}
label h "the old form"
WORKDIR /srv
WORKDIR data/../www
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
CMD exec server --name "$NAME"
copy --from=build --chown=10 --link src/ ./
COPY ["a file", "b", "dir/"]
COPY one /abs/target
USER ${NAME}:staff
"#,
        )
        .unwrap();
        assert_eq!(
            (stage.base.as_str(), stage.name.as_deref()),
            ("build", Some("final"))
        );
        assert_eq!(stage.args, map(&[("NAME", "app"), ("VERSION", "1.2")]));
        assert_eq!(
            stage.env,
            [
                ("HOME".to_owned(), "/home/app".to_owned()),
                // Replaced in place by the later ENV.
                ("GREETING".to_owned(), "hi".to_owned()),
                // $HOME as it was before the line that sets it: unset.
                ("SELF".to_owned(), "x".to_owned()),
                ("LEGACY".to_owned(), "two words  here".to_owned()),
                ("PATH".to_owned(), format!("/opt/bin:{DEFAULT_PATH}")),
            ]
        );
        assert_eq!(
            stage.labels,
            map(&[
                ("a", "1"),
                ("b", "two words"),
                ("c", "$NAME"),
                ("d", "app-1.2"),
                ("e", "fallback"),
                ("f", "set"),
                ("g", ""),
                ("h", "the old form"),
            ])
        );
        assert_eq!(stage.working_dir.as_deref(), Some("/srv/www"));
        assert_eq!(
            stage.cmd,
            Some(strings(&[
                "/bin/bash",
                "-o",
                "pipefail",
                "-c",
                "exec server --name \"$NAME\""
            ]))
        );
        assert_eq!(
            copies(&stage),
            [
                (Some("build"), Some((10, 10)), vec!["src/"], "/srv/www/"),
                (None, None, vec!["a file", "b"], "/srv/www/dir/"),
                (None, None, vec!["one"], "/abs/target"),
            ]
        );
        assert_eq!(stage.copies[0].line, 31);
        assert_eq!(stage.user.as_deref(), Some("app:staff"));
    }

    #[test]
    fn honours_the_escape_directive() {
        let stage = FinalStage::parse(
            "# escape=`\nFROM scratch\nLABEL a=\"x\" `\n      b=\"C:\\path\"\n\
             ENTRYPOINT [\"/app\"]\n",
        )
        .unwrap();
        assert_eq!(stage.labels, map(&[("a", "x"), ("b", "C:\\path")]));
        assert_eq!(stage.entrypoint, Some(strings(&["/app"])));
    }

    #[test]
    fn malformed_dockerfiles_give_clear_errors() {
        let error = |text: &str| FinalStage::parse(text).unwrap_err().to_string();
        assert_eq!(
            error("FROM scratch\nENTRYPOINT [\"/bin/app\", \"run\"\n"),
            "container image: Dockerfile line 2: ENTRYPOINT: [\"/bin/app\", \"run\" is not a JSON \
             array of strings: EOF while parsing a list at line 1 column 18"
        );
        assert_eq!(
            error("FROM scratch\n\nFROBNICATE now\n"),
            "container image: Dockerfile line 3: unknown instruction FROBNICATE"
        );
        for (text, expected) in [
            (
                "FROM scratch\nCMD [\"a\", 1]\n",
                "line 2: CMD: [\"a\", 1] is not a JSON array",
            ),
            (
                "FROM scratch\nRUN make\n",
                "line 2: RUN: not supported in the final stage",
            ),
            (
                "FROM scratch\nADD x.tar /\n",
                "line 2: ADD: not supported in the final stage",
            ),
            ("# only a comment\n", "has no FROM instruction"),
            (
                "ENV A=1\nFROM scratch\n",
                "line 1: ENV before the first FROM",
            ),
            ("FROM scratch AS\n", "line 1: FROM: expected `FROM"),
            (
                "FROM scratch\nLABEL a=\"open\n",
                "line 2: LABEL: unterminated \" quote",
            ),
            (
                "FROM scratch\nLABEL a=${B\n",
                "line 2: LABEL: bad substitution",
            ),
            ("FROM scratch\nLABEL a=${B:=c}\n", "bad substitution"),
            ("FROM scratch\nENV A\n", "line 2: ENV: A has no value"),
            ("FROM scratch\nENV A=1 B\n", "B is not KEY=VALUE"),
            ("FROM scratch\nCMD\n", "line 2: CMD: needs a command"),
            (
                "FROM scratch\nCOPY --chown=nobody a /b\n",
                "only numeric ids",
            ),
            (
                "FROM scratch\nCOPY --chmod=755 a /b\n",
                "--chmod is not supported",
            ),
            ("FROM scratch\nCOPY a\n", "needs a source and a destination"),
            (
                "FROM scratch\nCOPY a b /c\n",
                "the destination /c must end in /",
            ),
            (
                "FROM scratch\nCOPY <<EOF /x\nhi\nEOF\n",
                "line 2: COPY: a heredoc",
            ),
            (
                "FROM a\nRUN <<EOF\nnever closed\n",
                "line 2: heredoc <<EOF is never closed",
            ),
            (
                "# escape=x\nFROM scratch\n",
                "line 1: the escape directive must be",
            ),
        ] {
            let message = error(text);
            assert!(message.contains(expected), "{text:?} gave {message:?}");
        }
    }

    fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn builds_the_autotrace_image_from_its_dockerfile() {
        let stage = final_stage(images().join("autotrace.Dockerfile")).unwrap();
        let work = tempfile::tempdir().unwrap();
        let busybox = work.path().join("busybox");
        fs::write(&busybox, b"\x7fELF not really busybox").unwrap();
        set_mode(&busybox, 0o755);
        let payload = work.path().join("payload");
        fs::create_dir_all(payload.join("injector")).unwrap();
        fs::create_dir_all(payload.join("python/3.12")).unwrap();
        fs::write(payload.join("injector/lumigo_injector.so"), b"\x7fELF").unwrap();
        set_mode(&payload.join("injector/lumigo_injector.so"), 0o644);
        symlink("3.12", payload.join("python/current")).unwrap();
        for dir in ["", "injector", "python", "python/3.12"] {
            set_mode(&payload.join(dir), 0o755);
        }

        let mut image = ImageBuilder::new("ghcr.io/lumigo-rs/autotrace:0.1.0", "amd64");
        apply_final_stage(&stage, &mut image, |copy| {
            match (copy.from.as_deref(), copy.sources[0].as_str()) {
                (Some("copier"), "/bin/busybox") => Ok(busybox.clone()),
                (Some("payload"), "/out/opt/lumigo") => Ok(payload.clone()),
                _ => Err(Error::Image(format!("unexpected {copy:?}"))),
            }
        })
        .unwrap();
        let out = work.path().join("autotrace.tar");
        image.write(&out).unwrap();

        let archive = OciArchive::open(&out).unwrap();
        assert_eq!(archive.user, stage.user);
        assert_eq!(
            archive.env,
            [
                format!("PATH={DEFAULT_PATH}"),
                "TARGET_DIRECTORY=/target".to_owned()
            ]
        );
        assert_eq!(archive.entrypoint, stage.entrypoint);
        assert_eq!(archive.cmd, None);
        assert_eq!(archive.labels, stage.labels);
        assert_eq!(
            archive.history,
            [
                "COPY --from=copier /bin/busybox /bin/busybox",
                "COPY --from=payload --chown=0:0 /out/opt/lumigo /opt/lumigo",
            ]
        );
        let summary: Vec<(usize, &str, u32, u32, u32, bool)> = archive
            .entries
            .iter()
            .map(|e: &Entry| {
                let is_dir = e.kind == EntryKind::Dir;
                (e.layer, e.path.as_str(), e.mode, e.uid, e.gid, is_dir)
            })
            .collect();
        assert_eq!(
            summary,
            [
                (0, "/bin", 0o755, 0, 0, true),
                (0, "/bin/busybox", 0o755, 0, 0, false),
                (1, "/opt", 0o755, 0, 0, true),
                (1, "/opt/lumigo", 0o755, 0, 0, true),
                (1, "/opt/lumigo/injector", 0o755, 0, 0, true),
                (
                    1,
                    "/opt/lumigo/injector/lumigo_injector.so",
                    0o644,
                    0,
                    0,
                    false
                ),
                (1, "/opt/lumigo/python", 0o755, 0, 0, true),
                (1, "/opt/lumigo/python/3.12", 0o755, 0, 0, true),
                (1, "/opt/lumigo/python/current", 0o777, 0, 0, false),
            ]
        );
        assert_eq!(
            archive.entry("/opt/lumigo/python/current").map(|e| &e.kind),
            Some(&EntryKind::Symlink {
                target: "3.12".to_owned()
            })
        );
    }

    #[test]
    fn copies_honour_chown_and_directory_destinations() {
        let stage = FinalStage::parse(
            "FROM scratch\nWORKDIR /app\nCOPY --chown=65532:65533 tool bin/\nCOPY conf /etc/app\n",
        )
        .unwrap();
        let work = tempfile::tempdir().unwrap();
        let tool = work.path().join("tool-built-elsewhere");
        fs::write(&tool, b"tool").unwrap();
        set_mode(&tool, 0o750);
        let conf = work.path().join("conf");
        fs::create_dir(&conf).unwrap();
        fs::write(conf.join("app.yaml"), b"a: 1").unwrap();
        set_mode(&conf, 0o700);
        set_mode(&conf.join("app.yaml"), 0o640);

        let mut image = ImageBuilder::new("chown", "arm64");
        apply_final_stage(&stage, &mut image, |copy| {
            Ok(match copy.sources[0].as_str() {
                "tool" => tool.clone(),
                _ => conf.clone(),
            })
        })
        .unwrap();
        let out = work.path().join("chown.tar");
        image.write(&out).unwrap();
        let archive = OciArchive::open(&out).unwrap();
        assert_eq!(archive.working_dir.as_deref(), Some("/app"));
        let owner = |path: &str| {
            let e = archive
                .entry(path)
                .unwrap_or_else(|| panic!("{path} is missing"));
            (e.mode, e.uid, e.gid)
        };
        // Named after the Dockerfile's source, not the artifact: `COPY tool bin/` makes bin/tool.
        assert_eq!(owner("/app/bin/tool"), (0o750, 65532, 65533));
        assert_eq!(owner("/app/bin"), (0o755, 0, 0));
        assert_eq!(owner("/etc/app"), (0o700, 0, 0));
        assert_eq!(owner("/etc/app/app.yaml"), (0o640, 0, 0));
    }

    #[test]
    fn copies_that_cannot_be_mapped_are_errors() {
        let work = tempfile::tempdir().unwrap();
        let missing = work.path().join("missing");
        let error = |text: &str| {
            let stage = FinalStage::parse(text).unwrap();
            let mut image = ImageBuilder::new("x", "amd64");
            apply_final_stage(&stage, &mut image, |_| Ok(missing.clone()))
                .unwrap_err()
                .to_string()
        };
        let message = error("FROM scratch\nCOPY a b /c/\n");
        assert!(
            message.contains("line 2: COPY a b /c/: one local artifact"),
            "{message}"
        );
        let message = error("FROM scratch\nCOPY *.so /c/\n");
        assert!(message.contains("wildcard"), "{message}");
        let message = error("FROM scratch\nCOPY a /c\n");
        assert!(
            message.contains("missing (the artifact for line 2)"),
            "{message}"
        );

        let stage = FinalStage::parse("FROM scratch\nCOPY a /c\n").unwrap();
        let mut image = ImageBuilder::new("x", "amd64");
        let message = apply_final_stage(&stage, &mut image, |copy| {
            Err(Error::Image(format!("nothing builds {}", copy.sources[0])))
        })
        .unwrap_err()
        .to_string();
        assert_eq!(message, "container image: nothing builds a");
    }
}
