//! What search counts as a word, decided here and the same for a message's text as it is
//! indexed and for the words searched, so that FTS5's `unicode61` tokenizer only splits text
//! at the spaces this module writes and folds case and diacritics:
//! - both are NFKC-normalized first (`ﬁle` is `file`, fullwidth `ＡＢＣ` is `ABC`, a
//!   halfwidth `ｶﾀｶﾅ` is `カタカナ`);
//! - a letter or digit is a word character; any other character (punctuation, symbols, emoji)
//!   separates words, and a combining mark belongs to the word it follows;
//! - each CJK character (Han, Hiragana, Katakana, Bopomofo, Hangul) is a word of its own:
//!   these scripts write no spaces between words, so a search for `北京` is the phrase of the
//!   two characters, adjacent, and finds them inside `我爱北京天安门`.
//!
//! The index is contentless: what it is given may differ from the stored text.

use std::borrow::Cow;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// The text to index for a message's text: its words separated by spaces, each CJK character
/// a word. ASCII text is given as it is: `unicode61` splits it at every character that is not
/// a letter or a digit, as [`words`] would.
pub(crate) fn indexed(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        return Cow::Borrowed(text);
    }
    Cow::Owned(words(text))
}

/// The FTS5 phrase for one piece of the user's query (one white-space separated piece): its
/// words as a quoted string, which FTS5 matches as those words adjacent and in order — one
/// word for a plain word, the characters of a CJK piece, the parts of `e-mail`. `None` when
/// the piece holds no word (only punctuation, symbols or emoji, which are not indexed).
pub(crate) fn phrase(piece: &str) -> Option<String> {
    let words = words(piece)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if words.is_empty() {
        return None;
    }
    debug_assert!(!words.contains('"'), "only word characters and spaces");
    Some(format!("\"{}\"", words.replace('"', "\"\"")))
}

/// `text` NFKC-normalized, every character that is not part of a word made a space, and a
/// space on each side of a CJK character.
fn words(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 2);
    let mut in_word = false;
    for c in text.nfkc() {
        if is_cjk(c) {
            out.push(' ');
            out.push(c);
            out.push(' ');
            in_word = false;
        } else if is_word_char(c) || (in_word && is_combining_mark(c)) {
            out.push(c);
            in_word = true;
        } else {
            out.push(' ');
            in_word = false;
        }
    }
    out
}

/// A letter or digit that `unicode61` keeps in a token (a mark counts as one only after one).
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || (c.is_alphanumeric()
            && !is_combining_mark(c)
            && !SQLITE_SEPARATORS.iter().any(|r| r.contains(&c)))
}

/// Letters (by Rust's Unicode tables, and left as they are by NFKC) that SQLite's `unicode61`
/// tokenizer takes for separators, its tables being of an older Unicode. Separators here too,
/// so that a piece made of them is not taken for a word the index could hold. Checked against
/// the bundled SQLite by a test.
const SQLITE_SEPARATORS: &[std::ops::RangeInclusive<char>] = &[
    '\u{19B0}'..='\u{19C0}',   // New Tai Lue vowel signs (marks in Unicode 6)
    '\u{19C8}'..='\u{19C9}',   // New Tai Lue tone marks
    '\u{1CF2}'..='\u{1CF3}',   // Vedic signs ardhavisarga, rotated ardhavisarga
    '\u{1F150}'..='\u{1F169}', // negative circled Latin capitals (🅐)
    '\u{1F170}'..='\u{1F189}', // negative squared Latin capitals (🅰 🅱 🅾 🅿)
];

/// A character of a script written without spaces between words, indexed as a word of its
/// own: Han (with the iteration marks and the Hangzhou numerals), Hiragana, Katakana,
/// Bopomofo, Hangul syllables and jamo. Only letters and digits: the punctuation of these
/// blocks (`、`, `。`, `・`) separates words as any other. Halfwidth and compatibility forms
/// are not listed: NFKC has made them the forms listed.
fn is_cjk(c: char) -> bool {
    matches!(
        c as u32,
        0x1100..=0x11FF // Hangul Jamo
        | 0x3005..=0x3007 // 々 〆 〇
        | 0x3021..=0x3029 // Hangzhou numerals
        | 0x3031..=0x3035 // kana repetition marks
        | 0x3038..=0x303C // Hangzhou numerals 10–30, 〻 〼
        | 0x3040..=0x30FF // Hiragana, Katakana (with ー)
        | 0x3100..=0x312F // Bopomofo
        | 0x3131..=0x318F // Hangul Compatibility Jamo
        | 0x3192..=0x3195 // Kanbun numerals
        | 0x31A0..=0x31BF // Bopomofo Extended
        | 0x31F0..=0x31FF // Katakana Phonetic Extensions
        | 0x3400..=0x4DBF // CJK Unified Ideographs Extension A
        | 0x4E00..=0x9FFF // CJK Unified Ideographs
        | 0xA960..=0xA97F // Hangul Jamo Extended-A
        | 0xAC00..=0xD7AF // Hangul Syllables
        | 0xD7B0..=0xD7FF // Hangul Jamo Extended-B
        | 0xF900..=0xFAFF // CJK Compatibility Ideographs (NFKC keeps a few)
        | 0x1AFF0..=0x1B16F // Kana Extended-B, Kana Supplement, Kana Extended-A, Small Kana
        | 0x20000..=0x3FFFF // the Supplementary and Tertiary Ideographic Planes
    ) && c.is_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_store::rusqlite::Connection;

    #[test]
    fn cjk_characters_are_words_of_their_own_and_other_words_stay_whole() {
        assert_eq!(
            words("東京タワーに行きました")
                .split_whitespace()
                .collect::<Vec<_>>(),
            [
                "東", "京", "タ", "ワ", "ー", "に", "行", "き", "ま", "し", "た"
            ]
        );
        assert_eq!(
            words("한국어 문장입니다")
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["한", "국", "어", "문", "장", "입", "니", "다"]
        );
        assert_eq!(
            words("Tokyoタワー、café!")
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["Tokyo", "タ", "ワ", "ー", "café"]
        );
        // NFKC: ligatures, fullwidth and halfwidth forms, a decomposed accent, circled digits.
        assert_eq!(
            words("ﬁle ＡＢＣ ｶﾀ e\u{301}t\u{e9} ①")
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["file", "ABC", "カ", "タ", "ét\u{e9}", "1"]
        );
        // Emoji, symbols and punctuation separate words; a mark stays with its word.
        assert_eq!(
            words("party🎉time ✅ → a\u{20dd}")
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["party", "time", "a\u{20dd}"]
        );
        assert_eq!(words("🎉 \u{301}").trim(), "");
    }

    #[test]
    fn a_piece_is_the_phrase_of_its_words_or_nothing() {
        assert_eq!(phrase("北京").as_deref(), Some("\"北 京\""));
        assert_eq!(phrase("Tokyoタワー").as_deref(), Some("\"Tokyo タ ワ ー\""));
        assert_eq!(phrase("a\"b").as_deref(), Some("\"a b\""));
        assert_eq!(phrase("ＡＢＣ").as_deref(), Some("\"ABC\""));
        for nothing in ["🎉", "\"", "(", "—", "…", "、。", "\u{301}", "🇯🇵", "👍🏽"]
        {
            assert_eq!(phrase(nothing), None, "{nothing:?}");
        }
    }

    #[test]
    fn ascii_text_is_indexed_as_it_is() {
        let ascii: String = (0u8..128).map(char::from).collect();
        assert!(matches!(indexed(&ascii), Cow::Borrowed(_)));
        assert!(matches!(indexed("naïve"), Cow::Owned(_)));
    }

    /// Which characters the bundled SQLite's `unicode61` tokenizer makes a token of, alone.
    fn sqlite_tokens(chars: &[char]) -> std::collections::BTreeSet<char> {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE VIRTUAL TABLE t USING fts5 (text, content='', contentless_delete=1); \
             CREATE VIRTUAL TABLE v USING fts5vocab (t, instance); BEGIN",
        )
        .unwrap();
        {
            let mut insert = conn
                .prepare("INSERT INTO t (rowid, text) VALUES (?1, ?2)")
                .unwrap();
            for &c in chars {
                insert.execute((c as i64, c.to_string())).unwrap();
            }
        }
        let mut stmt = conn.prepare("SELECT DISTINCT doc FROM v").unwrap();
        stmt.query_map([], |r| r.get::<_, i64>(0))
            .unwrap()
            .map(|d| char::from_u32(d.unwrap() as u32).unwrap())
            .collect()
    }

    /// The tokenizer splits only where this module wrote a space: every word character is a
    /// token of SQLite's (all but [`SQLITE_SEPARATORS`]), so a piece with a word always finds
    /// something to match, never nothing (which FTS5 would drop silently from the query); and
    /// ASCII, given as it is, is split as [`words`] splits it.
    #[test]
    fn every_word_character_is_a_token_of_the_bundled_sqlite() {
        // What NFKC leaves as it is, the only characters `words` looks at.
        let letters_and_digits: Vec<char> = (0..=char::MAX as u32)
            .filter_map(char::from_u32)
            .filter(|&c| c.is_alphanumeric() && !is_combining_mark(c))
            .filter(|&c| c.nfkc().eq([c]))
            .collect();
        let tokens = sqlite_tokens(&letters_and_digits);
        let separators: Vec<char> = letters_and_digits
            .iter()
            .copied()
            .filter(|c| !tokens.contains(c))
            .collect();
        let listed: Vec<char> = SQLITE_SEPARATORS
            .iter()
            .flat_map(|r| r.clone())
            .filter(|c| letters_and_digits.contains(c))
            .collect();
        assert_eq!(
            separators,
            listed,
            "{:x?}",
            separators.iter().map(|&c| c as u32).collect::<Vec<_>>()
        );
        let ascii: Vec<char> = (0u8..128).map(char::from).collect();
        let tokens = sqlite_tokens(&ascii);
        for c in ascii {
            assert_eq!(tokens.contains(&c), c.is_ascii_alphanumeric(), "{c:?}");
        }
    }
}
