import Foundation

/// A JSON value whose objects keep their keys in order, so files written from it read in the
/// order they were built (and a parsed file is written back in its own order).
public enum JSON: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSON])
    case object(JSONObject)

    // MARK: Reading

    public subscript(key: String) -> JSON? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    public subscript(index: Int) -> JSON? {
        if case .array(let a) = self, a.indices.contains(index) { return a[index] }
        return nil
    }

    /// The number, whether written as an integer or not.
    public var double: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        default: return nil
        }
    }

    public var int: Int? {
        switch self {
        case .int(let i): return i
        case .double(let d) where d == d.rounded() && abs(d) < 9e15: return Int(d)
        default: return nil
        }
    }

    public var string: String? { if case .string(let s) = self { return s }; return nil }
    public var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var array: [JSON]? { if case .array(let a) = self { return a }; return nil }
    public var object: JSONObject? { if case .object(let o) = self { return o }; return nil }
    public var isNull: Bool { self == .null }

    // MARK: Writing

    /// Compact text (one line), as JSON-lines protocols want it.
    public var compact: String {
        var s = ""
        write(to: &s, indent: nil, level: 0)
        return s
    }

    /// Indented text, `indent` spaces a level (Python's `json.dumps(indent=…)` layout).
    public func pretty(indent: Int = 1) -> String {
        var s = ""
        write(to: &s, indent: indent, level: 0)
        return s
    }

    private func write(to s: inout String, indent: Int?, level: Int) {
        switch self {
        case .null: s += "null"
        case .bool(let b): s += b ? "true" : "false"
        case .int(let i): s += String(i)
        case .double(let d): s += Self.format(d)
        case .string(let t): Self.quote(t, into: &s)
        case .array(let a):
            if a.isEmpty { s += "[]"; return }
            s += "["
            for (i, v) in a.enumerated() {
                if i > 0 { s += indent == nil ? ", " : "," }
                Self.newline(&s, indent, level + 1)
                v.write(to: &s, indent: indent, level: level + 1)
            }
            Self.newline(&s, indent, level)
            s += "]"
        case .object(let o):
            if o.isEmpty { s += "{}"; return }
            s += "{"
            for (i, (k, v)) in o.enumerated() {
                if i > 0 { s += indent == nil ? ", " : "," }
                Self.newline(&s, indent, level + 1)
                Self.quote(k, into: &s)
                s += ": "
                v.write(to: &s, indent: indent, level: level + 1)
            }
            Self.newline(&s, indent, level)
            s += "}"
        }
    }

    private static func newline(_ s: inout String, _ indent: Int?, _ level: Int) {
        guard let indent else { return }
        s += "\n" + String(repeating: " ", count: indent * level)
    }

    /// Shortest text that reads back as the same double; never `inf`/`nan` (written as null).
    static func format(_ d: Double) -> String {
        guard d.isFinite else { return "null" }
        return "\(d)"
    }

    private static func quote(_ t: String, into s: inout String) {
        s += "\""
        for u in t.unicodeScalars {
            switch u {
            case "\"": s += "\\\""
            case "\\": s += "\\\\"
            case "\n": s += "\\n"
            case "\r": s += "\\r"
            case "\t": s += "\\t"
            case _ where u.value < 0x20:
                s += "\\u" + String(repeating: "0", count: 4 - String(u.value, radix: 16).count) + String(u.value, radix: 16)
            default: s.unicodeScalars.append(u)
            }
        }
        s += "\""
    }

    // MARK: Parsing

    public struct ParseError: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// Parses one JSON text.
    public static func parse(_ text: String) throws -> JSON {
        try parse(Array(text.utf8))
    }

    public static func parse(_ data: Data) throws -> JSON {
        try parse([UInt8](data))
    }

    public static func parse(_ bytes: [UInt8]) throws -> JSON {
        var p = Parser(bytes: bytes)
        p.skipSpace()
        let v = try p.value(depth: 0)
        p.skipSpace()
        guard p.i == bytes.count else { throw p.error("trailing characters") }
        return v
    }

    private struct Parser {
        let bytes: [UInt8]
        var i = 0

        func error(_ what: String) -> ParseError { ParseError(description: "JSON: \(what) at byte \(i)") }

        mutating func skipSpace() {
            while i < bytes.count, [0x20, 0x09, 0x0a, 0x0d].contains(bytes[i]) { i += 1 }
        }

        mutating func expect(_ word: String) throws {
            let w = Array(word.utf8)
            guard i + w.count <= bytes.count, Array(bytes[i..<(i + w.count)]) == w else { throw error("expected \(word)") }
            i += w.count
        }

        mutating func value(depth: Int) throws -> JSON {
            guard depth < 512 else { throw error("nested too deeply") }
            guard i < bytes.count else { throw error("unexpected end") }
            switch bytes[i] {
            case UInt8(ascii: "{"):
                i += 1
                var o = JSONObject()
                skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(o) }
                while true {
                    skipSpace()
                    guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw error("expected a key") }
                    let k = try string()
                    skipSpace()
                    try expect(":")
                    skipSpace()
                    o[k] = try value(depth: depth + 1)
                    skipSpace()
                    guard i < bytes.count else { throw error("unexpected end") }
                    if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                    if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(o) }
                    throw error("expected , or }")
                }
            case UInt8(ascii: "["):
                i += 1
                var a: [JSON] = []
                skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(a) }
                while true {
                    skipSpace()
                    a.append(try value(depth: depth + 1))
                    skipSpace()
                    guard i < bytes.count else { throw error("unexpected end") }
                    if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                    if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(a) }
                    throw error("expected , or ]")
                }
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): try expect("true"); return .bool(true)
            case UInt8(ascii: "f"): try expect("false"); return .bool(false)
            case UInt8(ascii: "n"): try expect("null"); return .null
            case UInt8(ascii: "N"): try expect("NaN"); return .null
            case UInt8(ascii: "I"): try expect("Infinity"); return .null
            default: return try number()
            }
        }

        mutating func number() throws -> JSON {
            let start = i
            var integral = true
            if i < bytes.count, bytes[i] == UInt8(ascii: "-") {
                i += 1
                if i < bytes.count, bytes[i] == UInt8(ascii: "I") { try expect("Infinity"); return .null }
            }
            while i < bytes.count {
                let c = bytes[i]
                if c >= 0x30 && c <= 0x39 { i += 1; continue }
                if c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E")
                    || c == UInt8(ascii: "+") || c == UInt8(ascii: "-") { integral = false; i += 1; continue }
                break
            }
            let text = String(decoding: bytes[start..<i], as: UTF8.self)
            if integral, let n = Int(text) { return .int(n) }
            guard !text.isEmpty, let d = Double(text) else { throw error("bad number '\(text)'") }
            return .double(d)
        }

        mutating func hex4() throws -> UInt32 {
            guard i + 4 <= bytes.count, let v = UInt32(String(decoding: bytes[i..<(i + 4)], as: UTF8.self), radix: 16) else {
                throw error("bad \\u escape")
            }
            i += 4
            return v
        }

        mutating func string() throws -> String {
            i += 1
            var out = [UInt8]()
            while true {
                guard i < bytes.count else { throw error("unterminated string") }
                let c = bytes[i]
                i += 1
                if c == UInt8(ascii: "\"") { break }
                guard c == UInt8(ascii: "\\") else { out.append(c); continue }
                guard i < bytes.count else { throw error("unterminated string") }
                let e = bytes[i]
                i += 1
                switch e {
                case UInt8(ascii: "n"): out.append(0x0a)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "r"): out.append(0x0d)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0c)
                case UInt8(ascii: "u"):
                    var v = try hex4()
                    if v >= 0xD800 && v < 0xDC00, i + 6 <= bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") {
                        i += 2
                        let lo = try hex4()
                        v = 0x10000 + ((v - 0xD800) << 10) + (lo &- 0xDC00)
                    }
                    let scalar = Unicode.Scalar(v) ?? "\u{FFFD}"
                    out.append(contentsOf: Array(String(Character(scalar)).utf8))
                default: out.append(e)
                }
            }
            return String(decoding: out, as: UTF8.self)
        }
    }
}

/// A JSON object: keys in insertion order, each once.
public struct JSONObject: Equatable, Sendable, Sequence, ExpressibleByDictionaryLiteral {
    public private(set) var keys: [String] = []
    private var values: [String: JSON] = [:]

    public init() {}

    public init(dictionaryLiteral elements: (String, JSON)...) {
        for (k, v) in elements { self[k] = v }
    }

    /// Reading gives nil for a missing key; writing nil removes the key.
    public subscript(key: String) -> JSON? {
        get { values[key] }
        set {
            if let newValue {
                if values.updateValue(newValue, forKey: key) == nil { keys.append(key) }
            } else if values.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }

    public var isEmpty: Bool { keys.isEmpty }
    public var count: Int { keys.count }

    public func makeIterator() -> AnyIterator<(String, JSON)> {
        var it = keys.makeIterator()
        return AnyIterator { it.next().map { k in (k, values[k] ?? .null) } }
    }

    public static func == (a: JSONObject, b: JSONObject) -> Bool { a.values == b.values }
}
