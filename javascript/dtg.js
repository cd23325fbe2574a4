// DanTagGen: "Use in prompt" copies the previewed final prompt into the tab's prompt box.
//
// One click listener on the page (delegation), so it works however late gradio renders
// the accordion. It reacts only to our own button (id "dtg-<tab>-copy"), reads only our
// own preview ("#dtg-<tab>-preview .dtg-preview-final"), and writes only the prompt box of
// that same tab; every lookup is checked, and a missing element means doing nothing.
(function () {
    "use strict";

    var COPY_ID = /^dtg-(txt2img|img2img)-copy$/;

    function root() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    function byId(id) {
        var app = root();
        if (!app) {
            return null;
        }
        return app.getElementById ? app.getElementById(id) : app.querySelector("#" + id);
    }

    function copyButtonTab(target) {
        var button = target && target.closest ? target.closest("[id^='dtg-']") : null;
        var match = button ? COPY_ID.exec(button.id) : null;
        return match ? match[1] : null;
    }

    function previewedPrompt(tab) {
        var preview = byId("dtg-" + tab + "-preview");
        var final = preview ? preview.querySelector(".dtg-preview-final") : null;
        return final ? final.textContent : null;
    }

    function promptBox(tab) {
        // The webui's own prompt box of the same tab: the one element outside ours we touch.
        var box = byId(tab + "_prompt");
        return box ? box.querySelector("textarea") : null;
    }

    function copyToPrompt(tab) {
        var text = previewedPrompt(tab);
        var textarea = promptBox(tab);
        if (text === null || text === "" || !textarea) {
            return false;
        }
        textarea.value = text;
        if (typeof updateInput === "function") {
            updateInput(textarea); // tells gradio the value changed
        }
        return true;
    }

    function onClick(event) {
        var tab = copyButtonTab(event.target);
        if (tab) {
            copyToPrompt(tab);
        }
    }

    function listen() {
        // On the gradio root: events inside a shadow root do not reach the document as is.
        var app = root();
        (app && app.addEventListener ? app : document).addEventListener("click", onClick);
    }

    if (typeof onUiLoaded === "function") {
        onUiLoaded(listen);
    } else {
        document.addEventListener("DOMContentLoaded", listen);
    }

    // For tests and other scripts; nothing else is made global.
    window.dtgCopyToPrompt = copyToPrompt;
})();
