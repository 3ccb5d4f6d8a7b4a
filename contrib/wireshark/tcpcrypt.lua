-- Wireshark/tshark dissector for TCP-ENO (RFC 8547) and tcpcrypt (RFC 8548).
--
-- * The ENO option (TCP option kind 69, RFC 8547 §4.1) in its SYN form (global suboption
--   with its b and a bits, TEP suboptions by name with the v bit, length bytes and
--   suboption data, §4.2-§4.4) and its non-SYN form.
-- * On a connection whose SYN-ACK chose a tcpcrypt TEP (RFC 8548 §7, 0x21-0x24), the
--   payload: Init1/Init2 (RFC 8548 §4.1: magic, message_len, sym_cipher list or choice,
--   nonce, public key) and the encryption frames (§4.2: control byte with the rekey bit,
--   clen, ciphertext, tag). Frames are reassembled across segments by TCP.
--
-- Install and use: see README.md next to this file.

local eno = Proto("tcpeno", "TCP-ENO option")
local tcpcrypt = Proto("tcpcrypt", "tcpcrypt")

local TEP_NAMES = {
    [0x20] = "Experimental",
    [0x21] = "TCPCRYPT_ECDHE_P256",
    [0x22] = "TCPCRYPT_ECDHE_P521",
    [0x23] = "TCPCRYPT_ECDHE_Curve25519",
    [0x24] = "TCPCRYPT_ECDHE_Curve448",
}
local AEAD_NAMES = {
    [0x0001] = "AEAD_AES_128_GCM",
    [0x0002] = "AEAD_AES_256_GCM",
    [0x0010] = "AEAD_CHACHA20_POLY1305",
}
local PUB_LEN = { [0x21] = 65, [0x22] = 133, [0x23] = 32, [0x24] = 56 }
local INIT1_MAGIC, INIT2_MAGIC = 0x15101A0E, 0x097105E0
local TAG_LEN = 16

local ef = {
    kind = ProtoField.uint8("tcpeno.kind", "Kind", base.DEC),
    length = ProtoField.uint8("tcpeno.length", "Length", base.DEC),
    form = ProtoField.string("tcpeno.form", "Form"),
    global = ProtoField.uint8("tcpeno.global", "Global suboption", base.HEX),
    global_b = ProtoField.bool("tcpeno.global.b", "b (passive role)", 8, nil, 0x01),
    global_a = ProtoField.bool("tcpeno.global.a", "a (application-aware)", 8, nil, 0x02),
    global_z = ProtoField.uint8("tcpeno.global.z", "z (reserved)", base.HEX, nil, 0x1c),
    suboption = ProtoField.bytes("tcpeno.suboption", "TEP suboption"),
    length_byte = ProtoField.uint8("tcpeno.length_byte", "Length byte", base.HEX),
    data_len = ProtoField.uint8("tcpeno.data_length", "Suboption data length", base.DEC),
    tep = ProtoField.uint8("tcpeno.tep", "TEP", base.HEX, TEP_NAMES, 0x7f),
    tep_v = ProtoField.bool("tcpeno.tep.v", "v (suboption data follows)", 8, nil, 0x80),
    data = ProtoField.bytes("tcpeno.data", "Suboption data"),
    nonsyn_data = ProtoField.bytes("tcpeno.nonsyn_data", "Non-SYN option data"),
}
eno.fields = ef

local cf = {
    init1 = ProtoField.bytes("tcpcrypt.init1", "Init1"),
    init2 = ProtoField.bytes("tcpcrypt.init2", "Init2"),
    magic = ProtoField.uint32("tcpcrypt.magic", "Magic", base.HEX),
    message_len = ProtoField.uint32("tcpcrypt.message_len", "message_len", base.DEC),
    nciphers = ProtoField.uint8("tcpcrypt.nciphers", "nciphers", base.DEC),
    sym_cipher = ProtoField.uint16("tcpcrypt.sym_cipher", "sym_cipher", base.HEX, AEAD_NAMES),
    n_a = ProtoField.bytes("tcpcrypt.n_a", "N_A"),
    n_b = ProtoField.bytes("tcpcrypt.n_b", "N_B"),
    pub = ProtoField.bytes("tcpcrypt.pub", "Pub"),
    ignored = ProtoField.bytes("tcpcrypt.ignored", "ignored"),
    frame = ProtoField.bytes("tcpcrypt.frame", "Frame"),
    control = ProtoField.uint8("tcpcrypt.control", "control", base.HEX),
    rekey = ProtoField.bool("tcpcrypt.control.rekey", "rekey", 8, nil, 0x01),
    cres = ProtoField.uint8("tcpcrypt.control.cres", "cres (reserved)", base.HEX, nil, 0xfe),
    clen = ProtoField.uint16("tcpcrypt.clen", "clen", base.DEC),
    ciphertext = ProtoField.bytes("tcpcrypt.ciphertext", "Ciphertext"),
    tag = ProtoField.bytes("tcpcrypt.tag", "Tag"),
}
tcpcrypt.fields = cf

local f_syn = Field.new("tcp.flags.syn")
local f_ack = Field.new("tcp.flags.ack")
local f_stream = Field.new("tcp.stream")

-- tcp.stream -> TEP chosen by B's SYN-ACK (RFC 8547 §4.6: the last TEP suboption)
local chosen = {}

local function tep_label(byte)
    local id = bit.band(byte, 0x7f)
    return TEP_NAMES[id] or string.format("0x%02x", id)
end

-- SYN-form contents (RFC 8547 §4.2-§4.4); returns the last TEP id seen (or nil)
local function syn_form(tvb, tree)
    local offset, last, seen_global = 2, nil, false
    local len = tvb:len()
    while offset < len do
        local byte = tvb(offset, 1):uint()
        if byte < 0x20 then
            local g = tree:add(ef.global, tvb(offset, 1))
            g:add(ef.global_b, tvb(offset, 1))
            g:add(ef.global_a, tvb(offset, 1))
            g:add(ef.global_z, tvb(offset, 1))
            if seen_global then g:append_text(" (ignored: not the first, §4.2)") end
            seen_global = true
            offset = offset + 1
        elseif byte < 0x80 then
            local s = tree:add(ef.suboption, tvb(offset, 1))
            s:set_text("TEP suboption: " .. tep_label(byte))
            s:add(ef.tep, tvb(offset, 1))
            s:add(ef.tep_v, tvb(offset, 1))
            last = byte
            offset = offset + 1
        elseif byte < 0xa0 then
            local n = bit.band(byte, 0x1f) + 1
            local whole = math.min(2 + n, len - offset)
            local s = tree:add(ef.suboption, tvb(offset, whole))
            s:add(ef.length_byte, tvb(offset, 1))
            s:add(ef.data_len, tvb(offset, 1), n)
            if offset + 1 < len then
                local tep = tvb(offset + 1, 1):uint()
                s:set_text("TEP suboption: " .. tep_label(tep) .. string.format(", %d data bytes", n))
                s:add(ef.tep, tvb(offset + 1, 1))
                s:add(ef.tep_v, tvb(offset + 1, 1))
                last = bit.band(tep, 0x7f)
                if whole > 2 then s:add(ef.data, tvb(offset + 2, whole - 2)) end
            end
            offset = offset + 2 + n
        else
            local s = tree:add(ef.suboption, tvb(offset, len - offset))
            s:set_text("TEP suboption: " .. tep_label(byte) .. ", data to the end of the option")
            s:add(ef.tep, tvb(offset, 1))
            s:add(ef.tep_v, tvb(offset, 1))
            if len - offset > 1 then s:add(ef.data, tvb(offset + 1, len - offset - 1)) end
            last = bit.band(byte, 0x7f)
            offset = len
        end
    end
    return last
end

function eno.dissector(tvb, pinfo, tree)
    local len = tvb:len()
    local t = tree:add(eno, tvb(0, len))
    t:add(ef.kind, tvb(0, 1))
    if len < 2 then return len end
    t:add(ef.length, tvb(1, 1))
    local syn = f_syn() and f_syn().value
    if syn then
        t:add(ef.form, "SYN form")
        local last = syn_form(tvb, t)
        t:append_text(" (SYN form)")
        if f_ack() and f_ack().value then
            -- B's SYN-ACK: the negotiated TEP (RFC 8547 §4.6)
            if last and TEP_NAMES[last] and last ~= 0x20 then
                chosen[f_stream().value] = last
                pinfo.conversation = tcpcrypt
            end
        end
    else
        t:add(ef.form, "non-SYN form")
        t:append_text(" (non-SYN form)")
        if len > 2 then t:add(ef.nonsyn_data, tvb(2, len - 2)) end
    end
    return len
end

DissectorTable.get("tcp.option"):add(69, eno)

-- Init1 / Init2 (RFC 8548 §4.1)
local function init_message(tvb, tree, magic, tep)
    local is1 = magic == INIT1_MAGIC
    local len = tvb:len()
    local t = tree:add(is1 and cf.init1 or cf.init2, tvb(0, len))
    t:set_text(is1 and "Init1" or "Init2")
    t:add(cf.magic, tvb(0, 4))
    t:add(cf.message_len, tvb(4, 4))
    local offset = 8
    if is1 then
        local n = tvb(8, 1):uint()
        t:add(cf.nciphers, tvb(8, 1))
        offset = 9
        for _ = 1, n do
            if offset + 2 > len then return end
            t:add(cf.sym_cipher, tvb(offset, 2))
            offset = offset + 2
        end
    else
        t:add(cf.sym_cipher, tvb(8, 2))
        offset = 10
    end
    if offset + 32 > len then return end
    t:add(is1 and cf.n_a or cf.n_b, tvb(offset, 32))
    offset = offset + 32
    local pub = math.min(PUB_LEN[tep] or (len - offset), len - offset)
    if pub > 0 then t:add(cf.pub, tvb(offset, pub)) end
    offset = offset + pub
    if offset < len then t:add(cf.ignored, tvb(offset, len - offset)) end
end

-- A frame (RFC 8548 §4.2): control | clen | ciphertext (tag at its end)
local function frame(tvb, tree)
    local len = tvb:len()
    local control = tvb(0, 1):uint()
    local t = tree:add(cf.frame, tvb(0, len))
    t:set_text(string.format("Frame, clen %d%s", len - 3,
                             bit.band(control, 1) == 1 and ", rekey" or ""))
    local c = t:add(cf.control, tvb(0, 1))
    c:add(cf.rekey, tvb(0, 1))
    c:add(cf.cres, tvb(0, 1))
    t:add(cf.clen, tvb(1, 2))
    if len - 3 > TAG_LEN then t:add(cf.ciphertext, tvb(3, len - 3 - TAG_LEN)) end
    if len - 3 >= TAG_LEN then t:add(cf.tag, tvb(len - TAG_LEN, TAG_LEN)) end
end

function tcpcrypt.dissector(tvb, pinfo, tree)
    local len = tvb:len()
    if len == 0 then return 0 end
    local tep = chosen[f_stream().value]
    local root = tree:add(tcpcrypt, tvb(0, len))
    pinfo.cols.protocol = "tcpcrypt"
    local offset, frames, inits = 0, 0, 0
    while offset < len do
        local left = len - offset
        local magic = left >= 4 and tvb(offset, 4):uint() or nil
        local need
        if magic == INIT1_MAGIC or magic == INIT2_MAGIC then
            need = left >= 8 and tvb(offset + 4, 4):uint() or nil
            if need and need < 8 then need = 8 end
        else
            need = left >= 3 and (3 + tvb(offset + 1, 2):uint()) or nil
        end
        if need == nil or need > left then
            if pinfo.can_desegment > 0 then
                pinfo.desegment_offset = offset
                pinfo.desegment_len = need and (need - left) or DESEGMENT_ONE_MORE_SEGMENT
                return len
            end
            root:add_expert_info(PI_MALFORMED, PI_WARN, "partial message (TCP reassembly off)")
            return len
        end
        if magic == INIT1_MAGIC or magic == INIT2_MAGIC then
            init_message(tvb(offset, need):tvb(), root, magic, tep)
            inits = inits + 1
        else
            frame(tvb(offset, need):tvb(), root)
            frames = frames + 1
        end
        offset = offset + need
    end
    local what = {}
    if inits > 0 then what[#what + 1] = "Init" end
    if frames > 0 then what[#what + 1] = string.format("%d frame%s", frames, frames > 1 and "s" or "") end
    pinfo.cols.info:append(" [tcpcrypt " .. table.concat(what, ", ") .. "]")
    return len
end

function tcpcrypt.init()
    chosen = {}
end
