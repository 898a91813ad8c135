//! What kind of failure an error is, carried with it from where it happens to the user.
//!
//! Errors stay `anyhow::Error` everywhere (their messages and context chains are what a person
//! reads); the place that knows *why* something failed tags it with a [`Kind`]. The CLI prints the
//! message; the wasm API hands the kind to JavaScript as `error.kind`, so the worker and the page
//! decide what to offer (reload the engine, free space, download again) without parsing text.

use std::fmt;

/// The kinds the browser front end acts on. The names are the strings JavaScript sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// WebGPU is missing, or no adapter / an adapter too limited for the engine.
    Webgpu,
    /// The GPU device was lost (driver reset, another tab, `device.destroy()`): reload the engine.
    DeviceLost,
    /// The GPU (or the wasm heap) could not allocate what the model needs.
    OutOfMemory,
    /// A buffer or binding would exceed the adapter's limits.
    Limits,
    /// The weights, pack manifest, config or a stored shard are invalid or damaged.
    BadWeights,
    /// A request the engine refuses: bad options, a broken image, a prompt over the context.
    BadInput,
    /// Storage quota exceeded.
    Quota,
    /// A download failed.
    Network,
    /// Anything else (a bug): the message says what.
    Internal,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Webgpu => "webgpu",
            Kind::DeviceLost => "device-lost",
            Kind::OutOfMemory => "out-of-memory",
            Kind::Limits => "limits",
            Kind::BadWeights => "bad-weights",
            Kind::BadInput => "bad-input",
            Kind::Quota => "quota",
            Kind::Network => "network",
            Kind::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::Webgpu, Kind::DeviceLost, Kind::OutOfMemory, Kind::Limits, Kind::BadWeights, Kind::BadInput, Kind::Quota, Kind::Network, Kind::Internal]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// An error message with its kind (the innermost cause of a chain that carries one).
#[derive(Debug)]
pub struct Tagged {
    pub kind: Kind,
    pub message: String,
}

impl fmt::Display for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Tagged {}

/// An error whose kind was named outside Rust (a JS callback's rejection: a stored shard found
/// `corrupt`, an IndexedDB read failing with `storage`): passed to JavaScript with that kind
/// unchanged, and never re-tagged by [`WithKind::kind`], so the front end can act on it (remove
/// the corrupt shard and fetch it again).
#[derive(Debug)]
pub struct Foreign {
    pub kind: String,
    pub message: String,
}

impl fmt::Display for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Foreign {}

/// The kind a [`Foreign`] error in `e`'s chain carries, if any.
pub fn foreign_kind(e: &anyhow::Error) -> Option<&str> {
    e.chain().find_map(|c| c.downcast_ref::<Foreign>().map(|f| f.kind.as_str()))
}

/// A new error of `kind`.
pub fn tagged(kind: Kind, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Tagged { kind, message: message.into() })
}

/// `bail!` with a kind: `fail!(Kind::BadInput, "steps must be ≥ 1 (got {n})")`.
#[macro_export]
macro_rules! fail {
    ($kind:expr, $($arg:tt)*) => {
        return Err($crate::error::tagged($kind, format!($($arg)*)))
    };
}

/// The kind of an error: the outermost tag in its chain (a tag added as context overrides the
/// cause's), or [`Kind::Internal`] when nothing tagged it.
pub fn kind_of(e: &anyhow::Error) -> Kind {
    e.chain().find_map(|c| c.downcast_ref::<Tagged>().map(|t| t.kind)).unwrap_or(Kind::Internal)
}

/// Tags the errors of a fallible step that are not tagged yet (an inner, more precise tag wins,
/// and so does a [`Foreign`] kind).
pub trait WithKind<T> {
    fn kind(self, kind: Kind) -> anyhow::Result<T>;
}

impl<T> WithKind<T> for anyhow::Result<T> {
    fn kind(self, kind: Kind) -> anyhow::Result<T> {
        self.map_err(|e| {
            if e.chain().any(|c| c.downcast_ref::<Tagged>().is_some()) || foreign_kind(&e).is_some() {
                e
            } else {
                // The whole chain's text in one tagged error, so it still prints once with `{:#}`.
                tagged(kind, format!("{e:#}"))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn kinds_survive_context_and_print_once() {
        let inner: anyhow::Result<()> = Err(tagged(Kind::BadWeights, "tensor 'x' has NaN"));
        let e = inner.context("loading the model").unwrap_err();
        assert_eq!(kind_of(&e), Kind::BadWeights);
        assert_eq!(format!("{e:#}"), "loading the model: tensor 'x' has NaN");

        let plain: anyhow::Result<()> = Err(anyhow::anyhow!("disk on fire")).context("reading");
        let e = plain.kind(Kind::BadInput).unwrap_err();
        assert_eq!(kind_of(&e), Kind::BadInput);
        assert_eq!(format!("{e:#}"), "reading: disk on fire");

        let pre: anyhow::Result<()> = Err(tagged(Kind::OutOfMemory, "no memory"));
        assert_eq!(kind_of(&pre.kind(Kind::BadInput).unwrap_err()), Kind::OutOfMemory);
        assert_eq!(kind_of(&anyhow::anyhow!("x")), Kind::Internal);

        // A kind named in JavaScript survives a step's tag, and its message prints once.
        let js: anyhow::Result<()> = Err(anyhow::Error::new(Foreign { kind: "corrupt".into(), message: "stored shard a.bin is corrupt".into() }));
        let e = js.context("reading shard a.bin").kind(Kind::BadWeights).unwrap_err();
        assert_eq!(foreign_kind(&e), Some("corrupt"));
        assert_eq!(format!("{e:#}"), "reading shard a.bin: stored shard a.bin is corrupt");
        assert_eq!(Kind::parse("device-lost"), Some(Kind::DeviceLost));
    }
}
