//! The LVM2 text metadata format, read by a small hand parser: `key = value` items (numbers,
//! strings, lists) and `name { ... }` sections, nested. Owns only the syntax; what the volume
//! group's sections mean is [`lvm`](super::lvm)'s. Any text gives an answer or an error, never
//! a panic (nesting is bounded).

/// A value of the text format.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Value {
    /// A number.
    Num(i64),
    /// A string (or a bare name).
    Str(String),
    /// `[ ... ]`.
    List(Vec<Value>),
    /// `name { ... }`.
    Section(Vec<(String, Value)>),
}

impl Value {
    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Section(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    pub(super) fn num(&self, key: &str) -> Result<u64, String> {
        match self.get(key) {
            Some(Value::Num(n)) if *n >= 0 => Ok(*n as u64),
            _ => Err(format!("no number `{key}`")),
        }
    }
    pub(super) fn str(&self, key: &str) -> Result<&str, String> {
        match self.get(key) {
            Some(Value::Str(s)) => Ok(s),
            _ => Err(format!("no string `{key}`")),
        }
    }
    pub(super) fn sections(&self) -> Vec<(&str, &Value)> {
        match self {
            Value::Section(items) => items
                .iter()
                .filter(|(_, v)| matches!(v, Value::Section(_)))
                .map(|(k, v)| (k.as_str(), v))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The tokens of the text format: names, strings, numbers and punctuation.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    Name(String),
    Str(String),
    Num(i64),
    Punct(char),
}

pub(super) fn tokens(t: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut c = t.char_indices().peekable();
    while let Some((i, ch)) = c.next() {
        match ch {
            '#' => while c.next_if(|&(_, x)| x != '\n').is_some() {},
            '"' => {
                let mut s = String::new();
                loop {
                    match c.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => s.extend(c.next().map(|(_, x)| x)),
                        Some((_, x)) => s.push(x),
                        None => return Err(format!("a string at byte {i} never ends")),
                    }
                }
                out.push(Tok::Str(s));
            }
            '=' | '{' | '}' | '[' | ']' | ',' => out.push(Tok::Punct(ch)),
            x if x.is_whitespace() => {}
            x if x.is_ascii_digit() || x == '-' => {
                let mut s = String::from(x);
                while let Some((_, d)) = c.next_if(|&(_, d)| d.is_ascii_alphanumeric() || d == '.')
                {
                    s.push(d);
                }
                // Floats (never in a VG section we read) are kept as names.
                out.push(s.parse().map(Tok::Num).unwrap_or(Tok::Name(s)));
            }
            x if x.is_ascii_alphanumeric() || "_.+".contains(x) => {
                let mut s = String::from(x);
                while let Some((_, d)) =
                    c.next_if(|&(_, d)| d.is_ascii_alphanumeric() || "_.+-".contains(d))
                {
                    s.push(d);
                }
                out.push(Tok::Name(s));
            }
            x => return Err(format!("unexpected `{x}` at byte {i}")),
        }
    }
    Ok(out)
}

/// Parses `key = value` and `name { ... }` items until `}` (or the end, at the top).
pub(super) fn items(
    t: &[Tok],
    p: &mut usize,
    depth: usize,
) -> Result<Vec<(String, Value)>, String> {
    if depth > 16 {
        return Err("sections nested too deep".into());
    }
    let mut v = Vec::new();
    loop {
        match t.get(*p) {
            None if depth == 0 => return Ok(v),
            None => return Err("a section never ends".into()),
            Some(Tok::Punct('}')) if depth > 0 => {
                *p += 1;
                return Ok(v);
            }
            Some(Tok::Name(k)) => {
                *p += 1;
                match t.get(*p) {
                    Some(Tok::Punct('=')) => {
                        *p += 1;
                        v.push((k.clone(), value(t, p, depth)?));
                    }
                    Some(Tok::Punct('{')) => {
                        *p += 1;
                        v.push((k.clone(), Value::Section(items(t, p, depth + 1)?)));
                    }
                    _ => return Err(format!("`{k}` is followed by neither `=` nor `{{`")),
                }
            }
            Some(x) => return Err(format!("unexpected {x:?}")),
        }
    }
}

fn value(t: &[Tok], p: &mut usize, depth: usize) -> Result<Value, String> {
    if depth > 16 {
        return Err("lists nested too deep".into());
    }
    let v = match t.get(*p) {
        Some(Tok::Num(n)) => Value::Num(*n),
        Some(Tok::Str(s)) | Some(Tok::Name(s)) => Value::Str(s.clone()),
        Some(Tok::Punct('[')) => {
            *p += 1;
            let mut l = Vec::new();
            loop {
                match t.get(*p) {
                    Some(Tok::Punct(']')) => break,
                    Some(Tok::Punct(',')) => *p += 1,
                    Some(_) => l.push(value(t, p, depth + 1)?),
                    None => return Err("a list never ends".into()),
                }
            }
            Value::List(l)
        }
        x => return Err(format!("expected a value, found {x:?}")),
    };
    *p += 1;
    Ok(v)
}
