
/// The migration wire format.
///
/// Each direction of the connection starts with a 16-byte preamble — the magic `SWIFTVMM`,
/// the stream version (u32, big-endian) and a reserved u32 — followed by sections:
///
/// ```
/// u16 type | u16 flags | u32 length | length bytes of payload | u32 CRC-32C of the previous bytes
/// ```
///
/// Compatibility rules, release to release:
/// - `streamVersion` changes only when an old reader could not make sense of the stream at
///   all; a receiver refuses any other version, naming both.
/// - A reader skips a section type it does not know when the section's `optional` flag is set,
///   and refuses the stream — naming the type — when it is not.
/// - Inside FDT payloads (configuration, machine state) a reader ignores properties and nodes
///   it does not know. A writer that adds something an older reader must not ignore lists it
///   by name in the root property `required-features`; a reader refuses a stream whose
///   `required-features` holds a name it does not know.
/// - Numbers are big-endian; lengths are checked against `maxSectionLength` before any
///   allocation; every section is checksummed.
/// - With a pre-shared key on both sides, every section after the handshake (after the
///   source's `auth`, and the target's check of it) is a `sealed` section instead: no CRC, an
///   AES-256-GCM tag, the real type inside — the construction is described at `StreamKeys`.
///   A side that seals refuses any unsealed section but an `error` report, which it shows as
///   unauthenticated.
public enum Wire {
    public static let magic: [UInt8] = Array("SWIFTVMM".utf8)
    /// 2: sealed sections; typed JSON messages; `state-v2` component states.
    public static let streamVersion: UInt32 = 2
    public static let maxSectionLength = 64 << 20
    /// FDT feature names this reader understands (see `required-features`).
    public static let knownFeatures: Set<String> = ["pages-v1", "state-v2", "dry-run", "copy-storage-v1", "local-handover", "channels-v1"]
    /// What this writer requires of a reader.
    public static let requiredFeatures = ["pages-v1", "state-v2"]
}

/// Section types. Values are never reused.
public enum SectionType: UInt16, Sendable, CaseIterable {
    case hello = 1          // S→R: versions, VM name/UUID, nonce (JSON)
    case helloReply = 2     // R→S: versions, nonce, HMAC proof (JSON)
    case auth = 3           // S→R: HMAC proof (JSON)
    case config = 4         // S→R: the machine's configuration for pre-checks (FDT)
    case accept = 5         // R→S: pre-checks passed, target built (JSON)
    case error = 6          // either way: a one-line reason; the connection ends (JSON)
    case pages = 7          // S→R: a batch of guest pages
    case roundEnd = 8       // S→R: end of a pre-copy round, with its statistics (JSON)
    case state = 9          // S→R: vCPU, irqchip, clock and device state (FDT)
    case ready = 10         // R→S: state loaded; the target waits for `go`
    case go = 11            // S→R: commit — the target may run the guest; the source never will again
    case running = 12       // R→S: the guest runs on the target (JSON: timestamps)
    case cancel = 13        // S→R: abort; the target discards everything (JSON)
    case progress = 14      // S→R: sender progress for the target's status (JSON, optional)
    case roundAck = 15      // R→S: every page of the round is in guest memory (flow control)
    case sealed = 16        // either way, after a keyed handshake: any other section, encrypted
    case verdict = 17       // R→S: a dry run's result — eligible, or every reason not (JSON)
    case diskBlocks = 18    // S→R: a run of a copied disk image (`send --copy-storage`)
    case handover = 24      // S→R: local hand-over — what the descriptors passed with it are (JSON + SCM_RIGHTS)
    case channel = 25       // S→R, first on an extra data connection: migration token and index (JSON)
    case channelReady = 26  // R→S: the data connection is taken (JSON)
    case channelSync = 27   // S→R on a data connection: all of a round's batches on it were sent (JSON)

    public var name: String { String(describing: self) }
}

/// One decoded section.
public struct Section: Sendable {
    public var type: SectionType
    public var payload: [UInt8]

    public init(type: SectionType, payload: [UInt8]) { self.type = type; self.payload = payload }
}

/// The 8-byte section header and the 4-byte CRC trailer.
public enum SectionFraming {
    public static let headerSize = 8
    public static let trailerSize = 4
    /// Bytes a section adds to its payload on the wire.
    public static let overhead = headerSize + trailerSize

    static func header(type: UInt16, optional: Bool, length: Int) -> [UInt8] {
        let len = UInt32(length)
        return [UInt8(type >> 8), UInt8(type & 0xff), 0, optional ? 1 : 0,
                UInt8(len >> 24), UInt8((len >> 16) & 0xff), UInt8((len >> 8) & 0xff), UInt8(len & 0xff)]
    }

    static func trailer(_ crc: UInt32) -> [UInt8] {
        [UInt8(crc >> 24), UInt8((crc >> 16) & 0xff), UInt8((crc >> 8) & 0xff), UInt8(crc & 0xff)]
    }

    static func bigEndian32<C: Collection<UInt8>>(_ b: C) -> UInt32 { b.reduce(0) { ($0 << 8) | UInt32($1) } }
}

/// Where a `SectionReader` gets its bytes: a socket, or a captured stream in memory.
public protocol ByteSource: AnyObject {
    /// Fills `buffer` completely or throws (`MigrationError.connection` at end of input).
    func readExactly(_ buffer: UnsafeMutableRawBufferPointer) throws
}

/// Reads the preamble and the checksummed sections of a stream, applying the compatibility
/// rules above. The one reader both `Connection` and `swiftvmm inspect` use.
public struct SectionReader {
    /// A section as framed on the wire, before the rules are applied.
    public struct RawSection: Sendable {
        public var rawType: UInt16
        public var optional: Bool
        public var payload: [UInt8]
        public var checksumOK: Bool
        /// The 8 header bytes (a sealed section's authenticated data).
        public var header: [UInt8]
        public var isSealed: Bool { rawType == SectionType.sealed.rawValue }
        public var type: SectionType? { SectionType(rawValue: rawType) }
        public var typeName: String { type?.name ?? "type \(rawType)" }
    }

    let source: any ByteSource

    public init(_ source: any ByteSource) { self.source = source }

    /// Reads the peer's preamble and returns its stream version.
    public func readPreamble() throws -> UInt32 {
        var b = [UInt8](repeating: 0, count: 16)
        try b.withUnsafeMutableBytes { p throws in try source.readExactly(p) }
        guard Array(b.prefix(8)) == Wire.magic else {
            throw MigrationError.stream("not a swiftvmm migration stream (bad magic)")
        }
        return SectionFraming.bigEndian32(b[8..<12])
    }

    /// A section's 8 header bytes, read and checked: its length is within `Wire.maxSectionLength`.
    struct Header {
        var bytes: [UInt8]
        var rawType: UInt16 { UInt16(bytes[0]) << 8 | UInt16(bytes[1]) }
        var length: Int { Int(SectionFraming.bigEndian32(bytes[4..<8])) }
    }

    func readHeader() throws -> Header {
        var bytes = [UInt8](repeating: 0, count: SectionFraming.headerSize)
        try bytes.withUnsafeMutableBytes { p throws in try source.readExactly(p) }
        let header = Header(bytes: bytes)
        guard header.length <= Wire.maxSectionLength else {
            throw MigrationError.stream("section type \(header.rawType) claims \(header.length) bytes, more than the \(Wire.maxSectionLength >> 20) MiB limit")
        }
        return header
    }

    /// The next section as framed, with its checksum verdict; the length is checked against
    /// `Wire.maxSectionLength` before anything is allocated.
    public func readRaw() throws -> RawSection { try readBody(readHeader()) }

    /// The rest of the section `header` begins: its payload (of which `prefix` was read
    /// already) and, unless it is sealed, its CRC.
    func readBody(_ header: Header, prefix: [UInt8] = []) throws -> RawSection {
        let rawType = header.rawType, len = header.length
        var readError: Error?
        let payload = [UInt8](unsafeUninitializedCapacity: len) { buf, count in
            _ = buf.initialize(from: prefix)
            do { try source.readExactly(UnsafeMutableRawBufferPointer(UnsafeMutableBufferPointer(rebasing: buf[prefix.count...]))) } catch { readError = error }
            count = len
        }
        if let readError { throw readError }
        if rawType == SectionType.sealed.rawValue {
            // Authenticated by its tag when it is opened; no CRC.
            return RawSection(rawType: rawType, optional: false, payload: payload, checksumOK: true, header: header.bytes)
        }
        var crc = header.bytes.withUnsafeBytes { CRC32C.update(0, $0) }
        crc = payload.withUnsafeBytes { CRC32C.update(crc, $0) }
        return RawSection(rawType: rawType, optional: header.bytes[3] & 1 != 0, payload: payload,
                          checksumOK: try readTrailer() == crc, header: header.bytes)
    }

    /// A section's 4-byte CRC trailer.
    func readTrailer() throws -> UInt32 {
        var trailer = [UInt8](repeating: 0, count: SectionFraming.trailerSize)
        try trailer.withUnsafeMutableBytes { p throws in try source.readExactly(p) }
        return SectionFraming.bigEndian32(trailer)
    }

    /// The next section this reader understands: a bad checksum or an unknown required type
    /// fails, an unknown optional type is skipped. With `opener`, sections must be sealed.
    @_spi(Fuzzing) public func read(opener: SectionOpener? = nil) throws -> Section {
        while true {
            var raw = try readRaw()
            if let opener {
                try unseal(&raw, opener)
            } else if raw.isSealed {
                throw MigrationError.auth("the peer seals its stream, but this side has no key (--key-file)")
            }
            if let section = try accept(raw) { return section }
        }
    }

    /// Like `read()` on an unsealed stream, but a `pages` section is applied by `decoder` as it
    /// is read — a raw batch straight into its guest pages, checked before a byte is placed and
    /// checksummed after (a failure ends the migration, so its bytes are never used). It comes
    /// back applied, its payload beginning with the batch's header and bitmaps.
    @_spi(Fuzzing) public func read(applying decoder: PageDecoder) throws -> Section {
        while true {
            let header = try readHeader()
            var prefix: [UInt8] = []
            if header.rawType == SectionType.pages.rawValue && header.length >= PageBatch.fixedSize {
                prefix = [UInt8](repeating: 0, count: PageBatch.fixedSize)
                try prefix.withUnsafeMutableBytes { p throws in try source.readExactly(p) }
                if try decoder.place(prefix, section: header.bytes, from: self) { return Section(type: .pages, payload: prefix) }
            }
            // Anything else (and a batch that cannot be placed as it comes): the ordinary way.
            let raw = try readBody(header, prefix: prefix)
            guard !raw.isSealed else { throw MigrationError.auth("the peer seals its stream, but this side has no key (--key-file)") }
            guard let section = try accept(raw) else { continue }
            if section.type == .pages { try decoder.apply(section.payload) }
            return section
        }
    }

    /// An opened section checked against the rules: nil when it is to be skipped.
    private func accept(_ raw: RawSection) throws -> Section? {
        guard raw.checksumOK else {
            throw MigrationError.stream("checksum mismatch in \(raw.typeName) section (\(raw.payload.count) bytes): the stream was corrupted")
        }
        guard let type = raw.type else {
            if raw.optional { return nil }
            throw MigrationError.stream("unknown required section type \(raw.rawType): the sender is newer than this swiftvmm")
        }
        return Section(type: type, payload: raw.payload)
    }

    /// The section inside a sealed one. An unsealed `error` report is let through as the
    /// peer's unauthenticated word (it can only end the migration, as a cut wire would); any
    /// other unsealed section is refused.
    private func unseal(_ raw: inout RawSection, _ opener: SectionOpener) throws {
        guard raw.isSealed else {
            if raw.type == .error && raw.checksumOK {
                let desc = (try? Section(type: .error, payload: raw.payload).message(ErrorReport.self))?.desc ?? "unknown error"
                throw MigrationError.peer("\(desc) (unauthenticated)")
            }
            throw MigrationError.stream("stream authentication failed at section \(opener.sequence): an unsealed \(raw.typeName) section")
        }
        try opener.open(&raw.payload, header: raw.header)
        let n = raw.payload.count
        guard n >= 4 else { throw SectionOpener.failed(opener.sequence - 1) }
        raw.rawType = UInt16(raw.payload[n - 4]) << 8 | UInt16(raw.payload[n - 3])
        raw.optional = raw.payload[n - 1] & 1 != 0
        raw.payload.removeLast(4)
        guard raw.rawType != SectionType.sealed.rawValue else {
            throw MigrationError.stream("section \(opener.sequence - 1) is a sealed section inside a sealed one")
        }
    }
}

/// A captured stream in memory, read as a `ByteSource`.
public final class ByteBufferSource: ByteSource {
    private let bytes: [UInt8]
    public private(set) var offset = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var atEnd: Bool { offset >= bytes.count }

    public func readExactly(_ buffer: UnsafeMutableRawBufferPointer) throws {
        guard bytes.count - offset >= buffer.count else {
            offset = bytes.count
            throw MigrationError.connection("the stream ends in the middle of a section")
        }
        bytes.withUnsafeBytes { src in
            if let d = buffer.baseAddress, let s = src.baseAddress { d.copyMemory(from: s + offset, byteCount: buffer.count) }
        }
        offset += buffer.count
    }
}
