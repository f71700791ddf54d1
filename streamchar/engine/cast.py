"""Who plays a render: shipped characters by name, with given images and voices in their place."""

from __future__ import annotations

from streamchar.engine.characters import Character, list_characters


def cast_characters(engine, count: int, names: list[str] | None = None, images: list[str] | None = None,
                    voices: list[str] | None = None) -> list[Character]:  # fmt: skip
    """``count`` characters: ``names`` (shipped names or folders), else the default and the next shipped ones,
    with ``images`` and ``voices`` replacing their images and voices in order.

    Raises:
        ValueError: more names, images or voices than the render plays.
    """
    ecfg = engine.cfg.engine
    names = list(names or [])
    shipped = [ecfg.character] + [n for n in list_characters(ecfg.characters_dir) if n != ecfg.character]
    names += [n for n in shipped if n not in names][: max(0, count - len(names))]
    images, voices = list(images or []), list(voices or [])
    if len(images) > count or len(voices) > count or len(names) > count:
        raise ValueError(
            f"This render plays {count} character(s); give at most {count} --image/--voice/--character."
        )
    characters = []
    for i in range(count):
        character = engine.character(names[i])
        if i < len(images):
            character = character.with_image(images[i], engine.video_codec.image_size)
        if i < len(voices):
            character = character.with_voice(voices[i], engine.timeline.sample_rate)
        characters.append(character)
    return characters
