/// Splits the bytes a QMP client sends into JSON texts, as QEMU's JSON streamer does: a
/// message ends where its outermost `{…}` (or `[…]`) closes, whatever follows — clients such as
/// `qemu.qmp` send no newline. Anything else at the top level (a bare word, a number, a stray
/// closing bracket) ends at the next newline and is handed over to be refused.
struct QMPFramer {
    enum Frame {
        case message([UInt8])
        /// A message grew past the limit; the connection should be closed.
        case tooLong
        /// Brackets nested deeper than QEMU allows.
        case tooDeep
    }

    static let maxDepth = 1024

    /// The reply to a frame that ends the connection (nil for a message).
    static func refusal(_ frame: Frame, maxBytes: Int) -> QMPError? {
        switch frame {
        case .message: return nil
        case .tooLong: return .generic("request longer than \(maxBytes) bytes")
        case .tooDeep: return .generic("JSON parse error, nested deeper than \(maxDepth)")
        }
    }
    let maxBytes: Int
    private var pending: [UInt8] = []
    private var depth = 0
    private var inString = false
    private var escaped = false

    init(maxBytes: Int) { self.maxBytes = maxBytes }

    /// Feeds bytes; returns the frames they completed, in order.
    mutating func feed(_ bytes: ArraySlice<UInt8>) -> [Frame] {
        var frames: [Frame] = []
        for b in bytes {
            if pending.isEmpty && depth == 0 && (b == 32 || b == 9 || b == 10 || b == 13) { continue }
            pending.append(b)
            if let f = step(b) {
                frames.append(f)
                if case .message = f {} else { return frames }
            } else if pending.count > maxBytes {
                frames.append(.tooLong)
                return frames
            }
        }
        return frames
    }

    /// Advances over one byte (already in `pending`); a frame when it completed one.
    private mutating func step(_ b: UInt8) -> Frame? {
        if inString {
            if escaped { escaped = false } else if b == 92 { escaped = true } else if b == 34 { inString = false }
            return nil
        }
        switch b {
        case 34: inString = true
        case 123, 91:
            depth += 1
            if depth > Self.maxDepth { return .tooDeep }
        case 125, 93:
            depth -= 1
            if depth <= 0 { return take() }
        case 10 where depth == 0: return take()
        default: break
        }
        return nil
    }

    private mutating func take() -> Frame {
        defer { pending.removeAll(keepingCapacity: true); depth = 0; inString = false; escaped = false }
        return .message(pending)
    }
}
