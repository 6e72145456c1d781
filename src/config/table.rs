//! The machinery behind the settings table in [`super::settings`]: the
//! `settings!` macro that turns one entry per setting into the
//! [`Config`](super::Config) field, the [`ServeArgs`](super::ServeArgs)
//! flag, `Default`, [`ServeArgs::merge`](super::ServeArgs::merge), the
//! flag-to-field conversion and the field's own validation, plus the
//! conversions the entries name.

use std::time::Duration;

use super::ByteSize;

/// The flag clap derives from a [`ServeArgs`](super::ServeArgs) field name,
/// as bytes: `--` and the name with `_` turned into `-`. `N` is
/// `field.len() + 2`. Evaluated at compile time by [`flag!`].
pub(super) const fn flag_bytes<const N: usize>(field: &str) -> [u8; N] {
    let name = field.as_bytes();
    let mut out = [b'-'; N];
    let mut i = 0;
    while i < name.len() {
        out[i + 2] = if name[i] == b'_' { b'-' } else { name[i] };
        i += 1;
    }
    out
}

/// `flag!(auth_timeout_ms)` is `"--auth-timeout-ms"`, a `&'static str`
/// computed at compile time: the key a [`ConfigError`](super::ConfigError)
/// names for a table setting.
macro_rules! flag {
    ($field:ident) => {{
        const FIELD: &str = stringify!($field);
        const BYTES: [u8; FIELD.len() + 2] = $crate::config::table::flag_bytes(FIELD);
        const FLAG: &str = match std::str::from_utf8(&BYTES) {
            Ok(flag) => flag,
            Err(_) => panic!("field names are ASCII"),
        };
        FLAG
    }};
}

/// Conversion of a flag that is the config value as it is.
pub(super) fn same<T>(v: T) -> T {
    v
}

/// Conversion of a `_ms` flag.
pub(super) fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Conversion of a `_us` flag.
pub(super) fn us(v: u64) -> Duration {
    Duration::from_micros(v)
}

/// Conversion of a size flag (`128KiB`).
pub(super) fn bytes(v: ByteSize) -> usize {
    v.0
}

/// Conversion of a comma-list flag: items trimmed, empty ones dropped.
pub(super) fn list(v: String) -> Vec<String> {
    super::comma_list(&v)
}

/// One day: per-connection timers are kept in 32-bit millisecond stamps.
pub(super) const DAY: Duration = Duration::from_secs(86_400);

/// Declares every setting; see [`super::settings`] for the table and the
/// form of an entry. Generates:
///
/// - `Config` with the hand-written fields, then one field per table
///   setting, and its `Default`;
/// - `ServeArgs` with one `Option<_>` field per flag (`#[arg(long)]`
///   added), in table order (the `--help` order), and `ServeArgs::merge`;
/// - `ServeArgs::apply_table`: every table setting given, converted into
///   a `Config`;
/// - `Config::validate_table`: the table's `invalid if` checks, each
///   naming its flag;
/// - for the tests, `ARG_FIELDS` and `CONFIG_FIELDS`.
macro_rules! settings {
    (
        $(#[$config_meta:meta])*
        pub struct Config {
            $(
                $(#[$hand_meta:meta])*
                pub $hand:ident: $hand_ty:ty = $hand_default:expr,
            )*
        }

        $(#[$args_meta:meta])*
        pub struct ServeArgs {
            $(
                $(#[$arg_meta:meta])*
                $arg:ident: $arg_ty:ty
                $(
                    => $convert:expr => {
                        $(#[$field_meta:meta])*
                        $field:ident: $field_ty:ty = $default:expr
                        $(, invalid if |$v:ident| $bad:expr => $message:expr)*
                        $(,)?
                    }
                )?;
            )*
        }
    ) => {
        $(#[$config_meta])*
        pub struct Config {
            $(
                $(#[$hand_meta])*
                pub $hand: $hand_ty,
            )*
            $($(
                $(#[$field_meta])*
                pub $field: $field_ty,
            )?)*
        }

        impl Default for Config {
            fn default() -> Self {
                Config {
                    $($hand: $hand_default,)*
                    $($($field: $default,)?)*
                }
            }
        }

        impl Config {
            /// The checks of the settings table, each on one setting.
            pub(super) fn validate_table(&self) -> Result<(), ConfigError> {
                $($($({
                    let $v: &$field_ty = &self.$field;
                    if $bad {
                        return Err(bad(flag!($arg), $message));
                    }
                })*)?)*
                Ok(())
            }
        }

        $(#[$args_meta])*
        pub struct ServeArgs {
            $(
                $(#[$arg_meta])*
                #[arg(long)]
                pub $arg: Option<$arg_ty>,
            )*
        }

        impl ServeArgs {
            /// Fill every unset field from `lower` (the TOML file).
            pub fn merge(mut self, lower: ServeArgs) -> ServeArgs {
                $(
                    if self.$arg.is_none() {
                        self.$arg = lower.$arg;
                    }
                )*
                self
            }

            /// Move every table setting given here into `cfg`, converted;
            /// the others keep `cfg`'s value.
            // An entry's conversion may be a closure, called right here.
            #[allow(clippy::redundant_closure_call)]
            pub(super) fn apply_table(&mut self, cfg: &mut Config) {
                $($(
                    if let Some(v) = self.$arg.take() {
                        let convert: fn($arg_ty) -> $field_ty = $convert;
                        cfg.$field = convert(v);
                    }
                )?)*
            }
        }

        /// Every [`ServeArgs`] field, in declaration order.
        #[cfg(test)]
        pub(super) const ARG_FIELDS: &[&str] = &[$(stringify!($arg)),*];

        /// Every [`Config`] field.
        #[cfg(test)]
        pub(super) const CONFIG_FIELDS: &[&str] =
            &[$(stringify!($hand),)* $($(stringify!($field),)?)*];
    };
}
