//! The SPDY/3 header-compression dictionary.
//!
//! These 1423 bytes are protocol data fixed by the SPDY/3 specification
//! (draft-mbelshe-httpbis-spdy-00, section 2.6.10.1), byte-identical to the
//! dictionary Go's spdystream uses. Both zlib streams of a connection are
//! primed with it; its Adler-32 ([`DICTIONARY_ADLER32`]) appears as the
//! dictionary id in the zlib header of the first header block.

/// Adler-32 checksum of [`DICTIONARY`]; the `DICTID` in the zlib header.
pub const DICTIONARY_ADLER32: u32 = 0xE3C6_A7C2;

/// The SPDY/3 zlib dictionary.
pub const DICTIONARY: &[u8; 1423] =
    b"\0\0\0\x07options\0\0\0\x04head\0\0\0\x04post\0\0\0\x03put\0\0\0\x06delete\0\0\0\x05trac\
    e\0\0\0\x06accept\0\0\0\x0eaccept-charset\0\0\0\x0faccept-encoding\0\0\0\x0faccept-langu\
    age\0\0\0\x0daccept-ranges\0\0\0\x03age\0\0\0\x05allow\0\0\0\x0dauthorization\0\0\0\x0dc\
    ache-control\0\0\0\x0aconnection\0\0\0\x0ccontent-base\0\0\0\x10content-encoding\0\0\0\
    \x10content-language\0\0\0\x0econtent-length\0\0\0\x10content-location\0\0\0\x0bcontent-\
    md5\0\0\0\x0dcontent-range\0\0\0\x0ccontent-type\0\0\0\x04date\0\0\0\x04etag\0\0\0\x06ex\
    pect\0\0\0\x07expires\0\0\0\x04from\0\0\0\x04host\0\0\0\x08if-match\0\0\0\x11if-modified\
    -since\0\0\0\x0dif-none-match\0\0\0\x08if-range\0\0\0\x13if-unmodified-since\0\0\0\x0dla\
    st-modified\0\0\0\x08location\0\0\0\x0cmax-forwards\0\0\0\x06pragma\0\0\0\x12proxy-authe\
    nticate\0\0\0\x13proxy-authorization\0\0\0\x05range\0\0\0\x07referer\0\0\0\x0bretry-afte\
    r\0\0\0\x06server\0\0\0\x02te\0\0\0\x07trailer\0\0\0\x11transfer-encoding\0\0\0\x07upgra\
    de\0\0\0\x0auser-agent\0\0\0\x04vary\0\0\0\x03via\0\0\0\x07warning\0\0\0\x10www-authenti\
    cate\0\0\0\x06method\0\0\0\x03get\0\0\0\x06status\0\0\0\x06200 OK\0\0\0\x07version\0\0\0\
    \x08HTTP/1.1\0\0\0\x03url\0\0\0\x06public\0\0\0\x0aset-cookie\0\0\0\x0akeep-alive\0\0\0\
    \x06origin100101201202205206300302303304305306307402405406407408409410411412413414415416\
    417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad R\
    equest401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Impleme\
    nted503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon\
    , Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,appli\
    cation/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,de\
    flate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
