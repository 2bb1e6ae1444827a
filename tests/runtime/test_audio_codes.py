from orpheus_tts.speech.audio_codes import FrameAssembler, frame_to_ids, frames_from_ids, snac_codes

OFF = 128266
F1 = (1, 2, 3, 4, 5, 6, 7)
F2 = (10, 20, 30, 40, 50, 60, 70)


def test_round_trip_two_frames():
    assert frames_from_ids(frame_to_ids(F1) + frame_to_ids(F2)) == [F1, F2]


def test_code_zero_is_valid_and_advances_position():
    zeros = (0,) * 7
    ids = frame_to_ids(zeros) + frame_to_ids(F1)
    assert ids[0] == OFF  # the id that naive decoders drop as "no code"
    assert frames_from_ids(ids) == [zeros, F1]


def test_bounds_4095_valid_4096_invalid():
    top = (4095,) * 7
    assert frames_from_ids(frame_to_ids(top)) == [top]
    # 4096 in slot 3 is the id of code 0 in slot 4: position-aware checking must reject it.
    ids = frame_to_ids(F1)
    ids[3] = OFF + 3 * 4096 + 4096
    asm = FrameAssembler()
    assert asm.push(ids) == []
    assert asm.dropped_frames == 1


def test_code_from_wrong_slot_is_invalid():
    ids = frame_to_ids(F1)
    ids[2] = OFF + 1 * 4096 + 5  # a valid slot-1 id in slot 2
    assert frames_from_ids(ids) == []


def test_bad_code_drops_only_its_frame_and_keeps_alignment():
    bad = frame_to_ids(F2)
    bad[6] = OFF - 1 + 7 * 4096 + 4096  # beyond every range
    ids = frame_to_ids(F1) + bad + frame_to_ids(F2) + frame_to_ids(F1)
    asm = FrameAssembler()
    assert asm.push(ids) == [F1, F2, F1]
    assert asm.dropped_frames == 1


def test_non_audio_ids_ignored_without_advancing():
    ids = frame_to_ids(F1)
    ids = [128257, *ids[:3], 128009, 128258, *ids[3:], 0, 5]
    assert frames_from_ids(ids) == [F1]


def test_partial_trailing_frame_is_held_back():
    asm = FrameAssembler()
    ids = frame_to_ids(F1) + frame_to_ids(F2)
    assert asm.push(ids[:10]) == [F1]
    assert asm.pending == 3
    assert asm.push(ids[10:]) == [F2]  # streaming: the rest arrives in a later step
    assert asm.pending == 0
    assert asm.push(frame_to_ids(F1)[:4]) == []
    assert asm.pending == 4


def test_custom_layout():
    ids = frame_to_ids(F1, audio_offset=1000, codebook_size=16)
    assert frames_from_ids(ids, audio_offset=1000, codebook_size=16) == [F1]
    assert frames_from_ids(frame_to_ids(F2, 1000, 16), 1000, 16) == []  # 20 >= 16


def test_snac_codes_mapping():
    assert snac_codes([F1, F2]) == ([1, 10], [2, 5, 20, 50], [3, 4, 6, 7, 30, 40, 60, 70])
    assert snac_codes([]) == ([], [], [])
