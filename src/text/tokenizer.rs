//! The DeepSeek byte-level BPE tokenizer (Hugging Face `tokenizers`, fancy-regex engine both
//! natively and in wasm), with the processor's image tags appended at run time (spec §9 rule 5).

use anyhow::{anyhow, Result};
use tokenizers::{AddedToken, Tokenizer};

pub const BOS: &str = "<｜begin▁of▁sentence｜>";
pub const EOS: &str = "<｜end▁of▁sentence｜>";
pub const PAD: &str = "<｜▁pad▁｜>";
pub const IMAGE_TAG: &str = "<image_placeholder>";
pub const GEN_TAG: &str = "<｜begin▁of▁generation｜>";
pub const BOI_TAG: &str = "<begin_of_image>";
pub const EOI_TAG: &str = "<end_of_image>";

/// A prompt as a sequence of text runs and trusted special-token ids. Only the code that builds
/// prompts can create `Special`; text (including anything a user typed) is encoded with special
/// tokens disabled, so it can never produce an image tag, BOS or EOS id.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Text(String),
    Special(u32),
}

pub struct TextTokenizer {
    tok: Tokenizer,
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    pub image: u32,
    pub gen: u32,
    pub boi: u32,
    pub eoi: u32,
}

impl TextTokenizer {
    pub fn from_bytes(json: &[u8]) -> Result<Self> {
        let mut tok = Tokenizer::from_bytes(json).map_err(|e| anyhow!("tokenizer.json could not be loaded: {e}"))?;
        // Same order as the upstream processor: each tag missing from the file gets the next id.
        for tag in [IMAGE_TAG, GEN_TAG, BOI_TAG, EOI_TAG] {
            if tok.token_to_id(tag).is_none() {
                tok.add_special_tokens(&[AddedToken::from(tag, true)]);
            }
        }
        // Text never turns into special tokens; the prompt builder inserts them as ids.
        tok.set_encode_special_tokens(true);
        let id = |t: &str| tok.token_to_id(t).ok_or_else(|| anyhow!("tokenizer.json has no '{t}' token"));
        let (bos, eos) = (id(BOS)?, id(EOS)?);
        Ok(TextTokenizer {
            bos,
            eos,
            pad: tok.token_to_id(PAD).unwrap_or(eos),
            image: id(IMAGE_TAG)?,
            gen: id(GEN_TAG)?,
            boi: id(BOI_TAG)?,
            eoi: id(EOI_TAG)?,
            tok,
        })
    }

    /// Ids of plain text (no BOS, no special-token matching).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tok.encode(text, false).map_err(|e| anyhow!("tokenization failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// BOS followed by the pieces, exactly one BOS like the reference's post-processor.
    pub fn encode_pieces(&self, pieces: &[Piece]) -> Result<Vec<u32>> {
        let mut ids = vec![self.bos];
        for p in pieces {
            match p {
                Piece::Text(t) if !t.is_empty() => ids.extend(self.encode_text(t)?),
                Piece::Text(_) => {}
                Piece::Special(id) => ids.push(*id),
            }
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok.decode(ids, true).map_err(|e| anyhow!("detokenization failed: {e}"))
    }

    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    pub fn is_special(&self, id: u32) -> bool {
        [self.bos, self.eos, self.pad, self.image, self.gen, self.boi, self.eoi].contains(&id)
    }
}

/// Turns generated ids into text incrementally, never emitting half a UTF-8 character
/// (byte-level BPE tokens can split a character across tokens).
pub struct StreamDecoder {
    ids: Vec<u32>,
    emitted: usize,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder {
    pub fn new() -> Self {
        StreamDecoder { ids: Vec::new(), emitted: 0 }
    }

    /// Adds a token; returns the newly completed text, if any.
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted || !text.is_char_boundary(self.emitted) {
            return Ok(None);
        }
        let new = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(Some(new))
    }

    /// The whole text so far (including a trailing incomplete character, as U+FFFD).
    pub fn text(&self, tok: &TextTokenizer) -> Result<String> {
        tok.decode(&self.ids)
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
