import Foundation
import Glibc

/// CLOCK_MONOTONIC, the clock every timestamp of the harness is taken from (the same clock as
/// swiftvmm's `SWIFTVMM_TRACE_STARTUP` line).
public enum Monotonic {
    /// Now, in seconds.
    public static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// Why a wait on an `OutputLog` ended without what it waited for.
public enum OutputWaitFailure: Error, Sendable {
    /// The stream ended (the writer closed it) before the line came.
    case ended
    /// The deadline passed.
    case timedOut
    /// A line matching the failure pattern came first.
    case failureLine(String)
}

/// Text that arrives in pieces (a child's stdout, a guest's serial port), kept whole and as
/// timestamped lines. Waits are woken by every append and by the end of the stream: nothing
/// here polls or sleeps.
public final class OutputLog: @unchecked Sendable {
    /// One complete line, without its newline (and without a trailing CR), and when it arrived.
    public struct Line: Sendable {
        public let time: Double
        public let text: String
    }

    /// A line a `waitForLine` found: its index, arrival time and capture groups (0 = whole match).
    public struct LineMatch: Sendable {
        public let index: Int
        public let time: Double
        public let text: String
        public let groups: [String?]
    }

    private let condition = NSCondition()
    private var complete = ""
    private var partial: [UInt8] = []
    private var partialTime = 0.0
    private var lineList: [Line] = []
    private var closed = false
    private var firstByte: Double?

    public init() {}

    /// Adds bytes received at `time`.
    public func append(_ bytes: UnsafeRawBufferPointer, at time: Double = Monotonic.now()) {
        guard !bytes.isEmpty else { return }
        condition.lock()
        defer { condition.broadcast(); condition.unlock() }
        if firstByte == nil { firstByte = time }
        var start = bytes.startIndex
        for i in bytes.indices where bytes[i] == 10 {
            partial.append(contentsOf: bytes[start..<i])
            takeLine(at: time)
            start = i + 1
        }
        if start < bytes.endIndex {
            if partial.isEmpty { partialTime = time }
            partial.append(contentsOf: bytes[start...])
        }
    }

    /// Adds text (for in-process writers such as a serial sink).
    public func append(_ text: String, at time: Double = Monotonic.now()) {
        var t = text
        t.withUTF8 { append(UnsafeRawBufferPointer($0), at: time) }
    }

    /// Marks the end of the stream; a last unterminated line becomes a line.
    public func close(at time: Double = Monotonic.now()) {
        condition.lock()
        defer { condition.broadcast(); condition.unlock() }
        guard !closed else { return }
        if !partial.isEmpty {
            lineList.append(Line(time: time, text: Self.decode(partial)))
            complete += String(decoding: partial, as: UTF8.self)
            partial = []
        }
        closed = true
    }

    private func takeLine(at time: Double) {
        lineList.append(Line(time: time, text: Self.decode(partial)))
        complete += String(decoding: partial, as: UTF8.self) + "\n"
        partial.removeAll(keepingCapacity: true)
    }

    private static func decode(_ bytes: [UInt8]) -> String {
        let body = bytes.last == 13 ? bytes.dropLast() : bytes[...]
        return String(decoding: body, as: UTF8.self)
    }

    private var currentText: String { partial.isEmpty ? complete : complete + String(decoding: partial, as: UTF8.self) }

    /// Everything received so far.
    public var text: String { condition.lock(); defer { condition.unlock() }; return currentText }
    /// The complete lines received so far.
    public var lines: [Line] { condition.lock(); defer { condition.unlock() }; return lineList }
    public var lineCount: Int { condition.lock(); defer { condition.unlock() }; return lineList.count }
    /// Whether the stream has ended.
    public var isClosed: Bool { condition.lock(); defer { condition.unlock() }; return closed }
    /// When the first byte arrived.
    public var firstByteTime: Double? { condition.lock(); defer { condition.unlock() }; return firstByte }

    /// Waits (woken by each append) until `predicate` holds for the text, the stream ends or
    /// `timeout` seconds pass; returns whether it holds.
    public func waitUntil(timeout: Double, _ predicate: (String) -> Bool) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        condition.lock()
        defer { condition.unlock() }
        while true {
            if predicate(currentText) { return true }
            if closed || !condition.waitSignal(before: deadline) { return predicate(currentText) }
        }
    }

    /// Waits until the text contains `needle`; false if the stream ends or time runs out first.
    @discardableResult
    public func waitFor(_ needle: String, timeout: Double = 60) -> Bool {
        waitUntil(timeout: timeout) { $0.contains(needle) }
    }

    /// Waits until the stream has ended; false on timeout.
    @discardableResult
    public func waitUntilClosed(deadline: Date) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while !closed {
            if !condition.waitSignal(before: deadline) { return closed }
        }
        return true
    }

    /// Waits for a complete line at index `start` or later that matches `pattern` (a regular
    /// expression); a line matching `failPattern` before it is an error, as are the end of the
    /// stream and the deadline.
    public func waitForLine(matching pattern: String, from start: Int = 0, timeout: Double,
                            failPattern: String? = "^FAIL") throws -> LineMatch {
        let rx = try NSRegularExpression(pattern: pattern)
        let frx = try failPattern.map { try NSRegularExpression(pattern: $0) }
        let deadline = Date(timeIntervalSinceNow: timeout)
        var i = max(0, start)
        condition.lock()
        defer { condition.unlock() }
        while true {
            while i < lineList.count {
                let line = lineList[i]
                let ns = line.text as NSString
                let range = NSRange(location: 0, length: ns.length)
                if let m = rx.firstMatch(in: line.text, range: range) {
                    let groups = (0..<m.numberOfRanges).map { g -> String? in
                        let r = m.range(at: g)
                        return r.location == NSNotFound ? nil : ns.substring(with: r)
                    }
                    return LineMatch(index: i, time: line.time, text: line.text, groups: groups)
                }
                if let frx, frx.firstMatch(in: line.text, range: range) != nil {
                    throw OutputWaitFailure.failureLine(line.text)
                }
                i += 1
            }
            if closed { throw OutputWaitFailure.ended }
            if !condition.waitSignal(before: deadline), i >= lineList.count, !closed { throw OutputWaitFailure.timedOut }
        }
    }

    /// The last `n` lines (and an unterminated one), for failure messages.
    public func tail(_ n: Int) -> [String] {
        condition.lock()
        defer { condition.unlock() }
        var t = lineList.suffix(n).map(\.text)
        if !partial.isEmpty { t.append(Self.decode(partial)); t = Array(t.suffix(n)) }
        return t
    }
}
