//! One struct per network part, each with `load` and `forward`.

pub mod llm;
