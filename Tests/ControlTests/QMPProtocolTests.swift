import Foundation
import Testing
@testable import Control

@Suite("QMP framing and request checks")
struct QMPProtocolTests {
    private func texts(_ frames: [QMPFramer.Frame]) -> [String] {
        frames.compactMap { if case .message(let m) = $0 { return String(decoding: m, as: UTF8.self) }; return nil }
    }

    @Test("objects end where their outermost brace closes: no newline needed, braces and quotes inside strings ignored")
    func framesObjects() {
        var f = QMPFramer(maxBytes: 1 << 20)
        let input = #"{"execute":"a","id":"}{\"x"}  {"execute":"b","arguments":{"k":[1,{"z":"]"}]}}"#
        #expect(texts(f.feed(ArraySlice(input.utf8))) == [#"{"execute":"a","id":"}{\"x"}"#, #"{"execute":"b","arguments":{"k":[1,{"z":"]"}]}}"#])
    }

    @Test("a message split across reads is whole once its last byte arrives")
    func framesAcrossReads() {
        var f = QMPFramer(maxBytes: 1 << 20)
        let input = Array(#"{"execute":"query-status","id":"a\\b"}"#.utf8)
        var out: [String] = []
        for b in input { out += texts(f.feed([b][...])) }
        #expect(out == [#"{"execute":"query-status","id":"a\\b"}"#])
    }

    @Test("bare words, strings and stray brackets at the top level end at a newline and are handed over to be refused")
    func framesGarbage() {
        var f = QMPFramer(maxBytes: 1 << 20)
        #expect(texts(f.feed(ArraySlice("xyz 12\n\"s\"\n]\n".utf8))) == ["xyz 12\n", "\"s\"\n", "]"])
    }

    @Test("too long and too deep end the connection")
    func framesLimits() {
        var long = QMPFramer(maxBytes: 100)
        let frames = long.feed(ArraySlice(("{\"a\":\"" + String(repeating: "x", count: 200)).utf8))
        guard case .tooLong? = frames.last else { Issue.record("\(frames)"); return }
        var deep = QMPFramer(maxBytes: 1 << 20)
        guard case .tooDeep? = deep.feed(ArraySlice(String(repeating: "[", count: 2000).utf8)).last else { Issue.record("not too deep"); return }
    }

    @Test("requests are checked as QEMU checks them, in QEMU's words")
    func requestChecks() throws {
        func desc(_ text: String) -> String? {
            do throws(QMPError) {
                _ = try QMP.Request(try QMP.Request.object(Array(text.utf8)))
                return nil
            } catch { return error.desc }
        }
        #expect(desc("[1]") == "QMP input must be a JSON object")
        #expect(desc(#"{"arguments":{}}"#) == "QMP input lacks member 'execute'")
        #expect(desc(#"{"execute":1}"#) == "QMP input member 'execute' must be a string")
        #expect(desc(#"{"execute":"x","arguments":[]}"#) == "QMP input member 'arguments' must be an object")
        #expect(desc(#"{"execute":"x","extra":1}"#) == "QMP input member 'extra' is unexpected")
        #expect(desc("{")?.hasPrefix("JSON parse error") == true)
        #expect(desc(#"{"execute":"x","id":{"a":1}}"#) == nil)
        #expect(QMPError(.commandNotFound, "c").json(id: 5)["id"] as? Int == 5)
    }

    @Test("commands refuse unknown arguments and wrong types; booleans are not numbers")
    func commandArguments() {
        func desc(_ name: String, _ args: [String: Any]) -> String? {
            do throws(QMPError) { _ = try ControlCommand(name: name, arguments: args); return nil } catch { return "\(error.errorClass.rawValue): \(error.desc)" }
        }
        #expect(desc("nope", [:]) == "CommandNotFound: The command nope has not been found")
        #expect(desc("stop", ["x": 1]) == "GenericError: Parameter 'x' is unexpected")
        #expect(desc("migrate", [:]) == "GenericError: Parameter 'uri' is missing")
        #expect(desc("migrate", ["uri": "unix:/tmp/m.sock"]) == nil)
        #expect(desc("migrate", ["uri": "unix:/tmp/m.sock", "blk": true, "inc": false]) == nil)
        #expect(desc("migrate", ["uri": "unix:/tmp/m.sock", "blk": 1])?.contains("expected: boolean") == true)
        #expect(desc("migrate", ["uri": "unix:/tmp/m.sock", "blk": true, "inc": true])?
            .hasPrefix("GenericError: incremental block migration (inc) is not supported") == true)
        #expect(desc("migrate-set-parameters", ["max-bandwidth": true])?.contains("max-bandwidth") == true)
        #expect(desc("migrate-set-parameters", ["x-swiftvmm-auto-converge": 1])?.contains("expected: boolean") == true)
        #expect(desc("migrate-set-parameters", ["downtime-limit": 0])?.contains("downtime-limit") == true)
        #expect(desc("migrate-set-parameters", ["downtime-limit": 0.5, "x-swiftvmm-compress": "none"]) == nil)
    }

    @Test("migrate's blk copies the disks for that migration, as x-swiftvmm-copy-storage does; without it the parameter decides")
    func blockMigrationFlag() throws {
        func copies(_ args: [String: Any]) throws -> Bool? {
            guard case .migrate(_, let copyStorage) = try ControlCommand(name: "migrate", arguments: args) else { return nil }
            return copyStorage
        }
        #expect(try copies(["uri": "unix:/tmp/m.sock", "blk": true]) == true)
        #expect(try copies(["uri": "unix:/tmp/m.sock", "blk": false]) == false)
        #expect(try copies(["uri": "unix:/tmp/m.sock"]) == false)
    }

    @Test("parameters become the migration's options; an empty key unseals")
    func parameters() throws {
        var p = MigrationParameters()
        p.apply(try MigrationParameters.Change(["downtime-limit": 20, "max-bandwidth": 1000, "x-swiftvmm-key": String(repeating: "ab", count: 16)]))
        #expect(p.json["x-swiftvmm-sealed"] as? Bool == true)
        let o = p.sendOptions(to: .unix(path: "/tmp/m.sock"))
        #expect(o.downtimeMs == 20 && o.maxBandwidth == 1000 && o.key?.count == 16)
        p.apply(try MigrationParameters.Change(["x-swiftvmm-key": "", "max-bandwidth": 0]))
        #expect(p.key == nil && p.sendOptions(to: .unix(path: "/tmp/m.sock")).maxBandwidth == nil)
    }

    @Test("multifd-channels: 0 is automatic (1 on a UNIX socket, 4 over TCP), 1…16 is taken as given, more is refused")
    func multifdChannels() throws {
        var p = MigrationParameters()
        #expect(p.sendOptions(to: .unix(path: "/tmp/m.sock")).connectionCount == 1)
        #expect(p.sendOptions(to: .tcp(host: "10.0.0.2", port: 4444)).connectionCount == 4)
        p.apply(try MigrationParameters.Change(["multifd-channels": 3]))
        #expect(p.json["multifd-channels"] as? Int == 3)
        #expect(p.sendOptions(to: .unix(path: "/tmp/m.sock")).connectionCount == 3)
        var local = p.sendOptions(to: .unix(path: "/tmp/m.sock"))
        local.local = true
        #expect(local.connectionCount == 1, "a hand-over moves no pages")
        #expect(throws: QMPError.self) { try MigrationParameters.Change(["multifd-channels": 17]) }
        #expect(throws: QMPError.self) { try MigrationParameters.Change(["multifd-channels": -1]) }
    }
}
