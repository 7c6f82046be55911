//! A command's arguments: positionals, `--flag value` options and switches,
//! sizes and names in the grammar shared with `fabric.toml` and `fabricctl`.

use fabric_syntax::parse_size;

use super::error::{usage, CliError};

/// A command's arguments: positionals and options, as declared.
pub(super) struct Args {
    positional: Vec<String>,
    values: Vec<(&'static str, String)>,
    switches: Vec<&'static str>,
}

impl Args {
    /// Splits `args` into positionals, options taking a value (`--size 8G` or
    /// `--size=8G`) and switches. Anything after `--` is positional.
    pub(super) fn parse(
        args: &[String],
        valued: &[&'static str],
        switches: &[&'static str],
    ) -> Result<Args, CliError> {
        let mut parsed = Args {
            positional: Vec::new(),
            values: Vec::new(),
            switches: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if arg == "--" {
                parsed.positional.extend(it.by_ref().cloned());
                break;
            }
            if !arg.starts_with('-') || arg == "-" {
                parsed.positional.push(arg.clone());
                continue;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (arg.as_str(), None),
            };
            if let Some(&flag) = valued.iter().find(|f| **f == name) {
                if parsed.value(flag).is_some() {
                    return Err(usage(format!("{flag} given twice")));
                }
                let value = match inline {
                    Some(v) => v.to_owned(),
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| usage(format!("{flag} needs a value")))?,
                };
                parsed.values.push((flag, value));
            } else if let Some(&flag) = switches.iter().find(|f| **f == name) {
                if inline.is_some() {
                    return Err(usage(format!("{flag} takes no value")));
                }
                parsed.switches.push(flag);
            } else {
                return Err(usage(format!("unknown option {arg:?}")));
            }
        }
        Ok(parsed)
    }

    /// Exactly `N` positionals, else a usage error quoting `synopsis`.
    pub(super) fn positionals<const N: usize>(
        &self,
        synopsis: &str,
    ) -> Result<[&str; N], CliError> {
        let got: Vec<&str> = self.positional.iter().map(String::as_str).collect();
        let n = got.len();
        got.try_into().map_err(|_| {
            let what = if n < N {
                "missing arguments"
            } else {
                "too many arguments"
            };
            usage(format!("{what}; usage: {synopsis}"))
        })
    }

    pub(super) fn value(&self, flag: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(f, _)| *f == flag)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn has(&self, flag: &str) -> bool {
        self.switches.contains(&flag)
    }

    /// The size given with `flag`, if any.
    pub(super) fn size(&self, flag: &str) -> Result<Option<u64>, CliError> {
        self.value(flag)
            .map(|v| parse_size(v).map_err(|e| usage(format!("{flag} {v:?}: {e}"))))
            .transpose()
    }

    /// `--block-size`, 512 (the default) or 4096, in the size grammar like
    /// every size (`4K`, `4KiB`, `4096`), as `fabricctl` reads it.
    pub(super) fn block_size(&self) -> Result<u32, CliError> {
        match self.size("--block-size")? {
            None | Some(512) => Ok(512),
            Some(4096) => Ok(4096),
            Some(_) => Err(usage(format!(
                "--block-size {:?}: must be 512 or 4096",
                self.value("--block-size").unwrap_or_default()
            ))),
        }
    }

    /// The size given with `flag`; a usage error quoting `synopsis` if absent.
    pub(super) fn required_size(&self, flag: &str, synopsis: &str) -> Result<u64, CliError> {
        self.size(flag)?
            .ok_or_else(|| usage(format!("{flag} is required; usage: {synopsis}")))
    }
}

/// A name for a new volume: the shared rule of `fabric.toml` and `fabricctl`
/// ([`fabric_syntax::valid_name`]), so whatever is made here can be named
/// there. Existing names are looked up as given.
pub(super) fn new_name(name: &str) -> Result<&str, CliError> {
    // The pool format holds longer names (old pools keep theirs); every name
    // the rule allows must fit it.
    const _: () = assert!(fabric_syntax::NAME_MAX <= crate::meta::NAME_MAX);
    fabric_syntax::valid_name(name).map_err(usage)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        // The shared grammar's table, through `--size` as the commands read it.
        for (input, want) in fabric_syntax::SIZE_TABLE {
            let args = ["--size".to_owned(), (*input).to_owned()];
            let got = Args::parse(&args, &["--size"], &[]).unwrap().size("--size");
            match (want, got) {
                (Ok(bytes), Ok(Some(got))) => assert_eq!(got, *bytes, "{input:?}"),
                (Err(e), Err(CliError::Usage(m))) => {
                    assert_eq!(m, format!("--size {input:?}: {e}"))
                }
                (want, got) => panic!("{input:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn block_sizes_use_the_size_grammar() {
        let block_size = |v: &str| {
            let args = ["--block-size".to_owned(), v.to_owned()];
            Args::parse(&args, &["--block-size"], &[])
                .unwrap()
                .block_size()
        };
        for (input, want) in [("512", 512), ("512B", 512), ("4096", 4096), ("4K", 4096)] {
            assert_eq!(block_size(input).unwrap(), want, "{input:?}");
        }
        assert_eq!(block_size("4KiB").unwrap(), 4096);
        assert_eq!(block_size("4k").unwrap(), 4096);
        assert_eq!(
            Args::parse(&[], &["--block-size"], &[])
                .unwrap()
                .block_size()
                .unwrap(),
            512
        );
        for (input, want) in [
            (
                "1024",
                "--block-size \"1024\": must be 512 or 4096".to_owned(),
            ),
            ("1K", "--block-size \"1K\": must be 512 or 4096".to_owned()),
            (
                "4KB",
                format!(
                    "--block-size \"4KB\": {}",
                    fabric_syntax::SizeError::Malformed
                ),
            ),
        ] {
            match block_size(input) {
                Err(CliError::Usage(m)) => assert_eq!(m, want),
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn positionals_after_dashes() {
        let args: Vec<String> = ["--size", "1M", "--", "--odd", "-x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a = Args::parse(&args, &["--size"], &[]).unwrap();
        assert_eq!(a.positionals::<2>("x").unwrap(), ["--odd", "-x"]);
        assert_eq!(a.size("--size").unwrap(), Some(1 << 20));
    }
}
