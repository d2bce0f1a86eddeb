//! The tiny built-in English "corpus" the synthetic tokenizer learns its first merges from:
//! common English words in rough frequency order plus frequent punctuation/whitespace/number
//! pre-tokens, each expanded into weighted pre-tokens (as GPT-2's byte-level regex would split
//! text). Only used to make merges plausible, so English text gets a few bytes per token.

/// Common English words, most frequent first (whitespace separated).
const WORDS: &str = "
the of and to a in is it you that he was for on are with as I his they be at one have this
from or had by not word but what some we can out other were all there when up use your how said
an each she which do their time if will way about many then them write would like so these her
long make thing see him two has look more day could go come did number sound no most people my
over know water than call first who may down side been now find any new work part take get
place made live where after back little only round man year came show every good me give our
under name very through just form sentence great think say help low line differ turn cause much
mean before move right boy old too same tell does set three want air well also play small end
put home read hand port large spell add even land here must big high such follow act why ask
men change went light kind off need house picture try us again animal point mother world near
build self earth father head stand own page should country found answer school grow study still
learn plant cover food sun four between state keep eye never last let thought city tree cross
farm hard start might story saw far sea draw left late run while press close night real life few
north open seem together next white children begin got walk example ease paper group always music
those both mark often letter until mile river car feet care second book carry took science eat
room friend began idea fish mountain stop once base hear horse cut sure watch color face wood main
enough plain girl usual young ready above ever red list though feel talk bird soon body dog family
direct leave song measure door product black short class wind question happen complete ship area
half rock order fire south problem piece told knew pass since top whole king space heard best
hour better true during hundred five remember step early hold west ground interest reach fast
sing listen six table travel less morning ten simple several toward war lay against pattern slow
center love person money serve appear road map rain rule govern pull cold notice voice unit power
town fine certain fly fall lead cry dark machine note wait plan figure star box field rest
correct able pound done beauty drive stood contain front teach week final gave green quick
develop ocean warm free minute strong special mind behind clear produce fact street nothing
course stay wheel full force blue object decide surface deep moon island foot system busy test
record boat common gold possible plane dry wonder laugh thousand ago ran check game shape hot
miss brought heat snow bring yes distant fill east paint language among because however
information government company business different important development following public service
program research students market health community history within without another something
everything around being having making looking working going using used called based known given
including become became second general national social political international available
report result results several especially possible service services model data function return
value values number process system systems level levels support include includes provide
provides believe continue create created love loved world years days things times
";

/// Extra pre-tokens (already in their pre-tokenized form) with their relative weights.
pub(crate) const EXTRA: &[(&str, u64)] = &[
    ("\n\n", 200_000),
    ("  ", 40_000),
    ("   ", 30_000),
    ("       ", 20_000),
    ("...", 20_000),
    (" (", 100_000),
    (" \"", 60_000),
    (" -", 40_000),
    (" –", 10_000),
    ("'s", 150_000),
    ("'t", 80_000),
    ("'re", 20_000),
    ("'ll", 20_000),
    ("'ve", 20_000),
    ("'m", 20_000),
    ("'d", 20_000),
    (").", 30_000),
    ("),", 30_000),
    ("\".", 20_000),
    ("\",", 20_000),
    (" 1", 50_000),
    (" 2", 40_000),
    (" 3", 30_000),
    (" 10", 30_000),
    (" 20", 20_000),
    (" 100", 15_000),
    (" 2024", 10_000),
    ("00", 30_000),
    ("000", 20_000),
    (" =", 30_000),
    (" {", 20_000),
    (" }", 20_000),
    ("();", 10_000),
    (" //", 10_000),
];

/// Weighted pre-tokens built from [`WORDS`] (each word with and without a leading space, lower
/// and capitalised, weights following Zipf's law) followed by [`EXTRA`].
pub(crate) fn pretokens() -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (rank, word) in WORDS.split_whitespace().enumerate() {
        let base = 10_000_000 / (rank as u64 + 10);
        let mut chars = word.chars();
        let capitalised: String = match chars.next() {
            Some(first) => first.to_uppercase().chain(chars).collect(),
            None => continue,
        };
        out.push((format!(" {word}"), base));
        out.push((word.to_string(), base / 8));
        out.push((format!(" {capitalised}"), base / 12));
        out.push((capitalised, base / 16));
    }
    out.extend(EXTRA.iter().map(|&(s, w)| (s.to_string(), w)));
    out
}
