//! Text in and out: tokenizer, chat template, sampling.

pub mod sampling;
pub mod template;
pub mod tokenizer;
